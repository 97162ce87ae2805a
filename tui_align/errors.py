"""Errors meant for the user's eyes, and the log file that keeps what those eyes never see.

The CLI and the app show an error as one line. Where a broad `except` makes that line out of an
exception nobody expected (a library's, a bug's), the traceback goes to the log file
(`<data folder>/logs/tui-align.log`, see paths.data_home), so a bug report has something in it.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
from pathlib import Path

log = logging.getLogger("tui_align")
# Without a handler, logging's last resort prints to stderr: over the app's screen. Until start_log
# picks a file, records go nowhere (and on to the root logger, where pytest's caplog sees them).
log.addHandler(logging.NullHandler())


class _OnceIntoOurLog(logging.Handler):
    """Passes each distinct message of a library's logger on to ours once: bitsandbytes logs on import that
    its optional CPU kernels are missing (peft imports it wherever it is installed), and LLM.int8 logs a
    cast on every matmul. Since transformers 5.25 installs `kernels`, bitsandbytes' import asks it for a CPU
    kernel from the hub, and it logs that it can't check the publisher offline. On stderr those lines would
    garble the app's screen and the training progress."""

    def __init__(self):
        super().__init__()
        self._seen: set = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg not in self._seen:
            self._seen.add(record.msg)
            log.handle(record)


for _library in ("bitsandbytes", "kernels"):
    logging.getLogger(_library).propagate = False
    logging.getLogger(_library).addHandler(_OnceIntoOurLog())

LOG_BYTES = 1_000_000  # per file; with LOG_BACKUPS old files, a few MB at most
LOG_BACKUPS = 2
_handler: logging.handlers.RotatingFileHandler | None = None


class UserError(Exception):
    """Something the user can fix; the CLI and the app show its message as one line."""


class UsageError(UserError):
    """Bad or missing arguments: the CLI exits 2 for these, 1 for a command that failed."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing its usage and exiting, so that every command
    reports a bad flag the same way (and `tui-align train --jsonl` as one error event)."""

    def error(self, message: str):
        raise UsageError(message)


def first_line(exc: BaseException, *, typed: bool = True) -> str:
    """An exception as one line: its message's first line, after its type name when `typed`."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if typed else lines[0]


def log_traceback(exc: BaseException, what: str = "") -> None:
    """Write `exc` with its traceback to the log file (nowhere before start_log)."""
    log.error("%s", what or first_line(exc), exc_info=(type(exc), exc, exc.__traceback__))


def report(exc: BaseException, *, typed: bool = True) -> str:
    """The one line a broad `except` shows for `exc`; its traceback goes to the log file."""
    line = first_line(exc, typed=typed)
    log_traceback(exc, line)
    return line


def current_log() -> Path | None:
    """The file this process logs to, if start_log has picked one."""
    return Path(_handler.baseFilename) if _handler is not None else None


def start_log(path: Path) -> None:
    """Send this process's log records to `path` (rotated); again with the same path, nothing changes.

    The app and its training child append to the same file; each line names its process id.
    """
    global _handler
    path = Path(path).absolute()
    if _handler is not None and _handler.baseFilename == str(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only data folder fails louder elsewhere; the log is not worth a second error
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS,
                                                   encoding="utf-8", delay=True)  # no file until a record
    handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s"))
    if _handler is not None:
        log.removeHandler(_handler)
        _handler.close()
    log.addHandler(handler)
    _handler = handler
