"""Files and folders written whole or not at all: a crash, a full disk or a Ctrl-C leaves the old one
(or none).

The new bytes go to a temp file (or folder) beside the target, so on the same file system, are fsynced,
and `os.replace` swaps them in; the parent folder is fsynced too, so the rename survives a power cut.

A kill -9 mid-write leaves the temp behind. Its name carries the writer's process id
(`.<name>.<pid>-<hex>.tmp`), so `clean_leftovers` removes exactly those whose writer is gone: every
start cleans the data folder, and every write cleans its own target's.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temp path beside `path` for the block to write (by name: some writers open files
    themselves); when the block ends it replaces `path`, and if the block raises it is removed."""
    path = Path(path)
    clean_leftovers(path.parent, path.name)
    temp = temp_path(path)
    # 0o666 lets the umask decide the mode, as a plain open() would (mkstemp would force 0o600, hiding
    # an exported GGUF from another user's llama.cpp); a file being replaced keeps its own mode.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if path.exists():
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` that replaces `path` only once the block is done (see atomic_path)."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as temp, open(temp, mode, encoding=encoding) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` (UTF-8), atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh empty folder beside `path` for the block to fill; when the block ends it replaces `path`
    whole (an earlier folder there is moved aside, then removed), and if the block raises it is removed."""
    path = Path(path)
    clean_leftovers(path.parent, path.name)
    staging = temp_path(path)
    staging.mkdir()
    try:
        yield staging
        for file in (f for f in staging.rglob("*") if f.is_file()):
            _fsync_file(file)
        if path.exists():
            # A folder can only be renamed onto an empty one: the old one steps aside first.
            old = temp_path(path)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(path.parent)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
# Temp files from before their names carried a process id (`.<name>.<hex>.tmp`): removed once they
# are this old, when no write can still be going on.
_OLD_STYLE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")
OLD_STYLE_AGE_S = 3600


def temp_path(path: Path) -> Path:
    """A fresh name beside `path` for its temp file or folder, naming this process (see clean_leftovers)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def clean_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temp files and folders in `folder` (only those for target `name`, if given) left by
    writers that are no longer running; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match:
            stale = not _alive(int(match["pid"]))
        else:
            match = _OLD_STYLE.match(entry.name)
            stale = bool(match) and _age(entry) > OLD_STYLE_AGE_S
        if not stale or (name is not None and match["name"] != name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another process cleaning the same folder, or no right to: not worth an error
    return removed


def clean_tree(root: str | os.PathLike) -> list[Path]:
    """clean_leftovers in `root` and every folder under it."""
    removed = []
    for folder, subfolders, _ in os.walk(root):
        removed += clean_leftovers(folder)
        subfolders[:] = [d for d in subfolders if not _LEFTOVER.match(d)]
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's, or no right to signal it)
        return True
    return True


def _age(entry: os.DirEntry) -> float:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some systems (Windows) can't open a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
