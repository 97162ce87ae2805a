"""`python -m tui_align.train_command` (and `tui-align train`): train a LoRA adapter on preference pairs.

With --jsonl every line on stdout is one JSON event (start, step, eval, checkpoint, note, done or
error); the app runs exactly this as a child process and reads that stream. Without it, progress
goes to stderr as readable lines.

Exit codes: 0 the run completed; 1 it failed (one `error` event or one `tui-align:` line says why);
2 bad or missing arguments (the same one event or line); 130 it was cancelled (SIGINT or SIGTERM: within
a second, in any phase; the step in hand is abandoned, checkpoint/ keeps the last one done, and `done`
says cancelled; continue it with --resume RUN_DIR. A cancel before the first step leaves no run folder). 130 rather than 0 so a shell `train && next` chain does not carry on after a Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from pathlib import Path

from .errors import UserError
from .pairs import Pair
from .train_args import build_parser, config_from_args  # noqa: F401  (the flags and their checks)
from .training.cancel import StopRequest
from .training.config import TrainConfig
from .training.rules import EXIT_USAGE


def _install(stop: StopRequest) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread (e.g. not inside a test worker)
    return {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}


def _quiet_libraries() -> None:
    """No download/loading progress bars or info logs from transformers: they would break up our lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_pairs(home: Path, data: str | None) -> list[Pair]:
    """Pairs from --data (any import format) or from the store in the data folder `home`."""
    from . import paths

    if data is not None:
        from .formats import read_pairs

        pairs = read_pairs(data, "auto")
        where = data
    else:
        store_file = paths.store_path(home)
        if not store_file.is_file():
            raise UserError(f"No pairs yet: {store_file} doesn't exist. Pick some answers in the app, or pass --data FILE.")
        from .store import Store

        store = Store(store_file)
        try:
            pairs = store.list_pairs()
        finally:
            store.close()
        where = str(store_file)
    if not pairs:
        raise UserError(f"No preference pairs in {where}: nothing to train on.")
    return pairs


def run_options(config: TrainConfig, *, home: str | None = None, data: str | None = None, model: str | None = None,
                out: str | None = None, resume: str | None = None):
    """The runner's options for these flags: the data folder resolved and, for a new run, its pairs loaded
    (a resumed run trains on the pairs its folder kept)."""
    from . import paths
    from .training.runner import RunOptions

    folder = paths.data_home(home)
    pairs = None if resume else load_pairs(folder, data)
    return RunOptions(config=config, models_dir=paths.models_dir(folder), adapters_dir=paths.adapters_dir(folder),
                      pairs=pairs, data=data, model=model, out=out, resume=resume)


def main(argv: list[str] | None = None) -> int:
    """Parse, load the pairs, train, report; returns the exit code (see the module docstring)."""
    from .cpu_share import follow_free_cores
    from .training.events import HumanEvents, JsonlEvents

    lends_cores = follow_free_cores()
    argv = list(sys.argv[1:] if argv is None else argv)
    emit = JsonlEvents(sys.stdout) if "--jsonl" in argv else HumanEvents(sys.stderr)
    if lends_cores:
        emit = saying_it_lends_cores(emit)
    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
    except UserError as exc:
        emit("error", message=str(exc), kind="data")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    from .training.runner import fail, run

    _quiet_libraries()
    try:
        options = run_options(config, home=args.home, data=args.data, model=args.model, out=args.out, resume=args.resume)
    except BaseException as exc:  # a bad --data file or an empty store: one error event, as in the run
        return fail(exc, emit)
    stop = StopRequest()
    previous = _install(stop)
    try:
        with warnings.catch_warnings():
            # Library warnings (generation flags, peft notices) would break up the progress lines.
            warnings.simplefilter("ignore")
            return run(options, emit, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def saying_it_lends_cores(emit):
    """`emit` with `lends_cores: true` in the start event: the app may now signal the run (cpu_share.py)."""

    def emit_start_with_it(kind: str, /, **fields) -> None:
        emit(kind, **fields, **({"lends_cores": True} if kind == "start" else {}))

    return emit_start_with_it


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: torch's takes most of a second after a cancel, and the
    app waits for the process to end. Everything the run wrote is closed by now; the streams and the
    log are flushed here."""
    import logging
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
