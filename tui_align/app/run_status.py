"""The training run going on, in one line for the chat screen's status bar: method, step k/N, ETA.

Drawn from the Train screen's TrainProcess (the one state of a run), never from a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .screens.train import eta_text
from .train_process import TrainProcess


def run_method(run: TrainProcess) -> str:
    """The method the child was started with; a resumed run's comes from its run.json ('' when unknown)."""
    argv = run.argv
    if "--method" in argv[:-1]:
        return argv[argv.index("--method") + 1]
    if "--resume" in argv[:-1]:
        try:
            return str(json.loads((Path(argv[argv.index("--resume") + 1]) / "run.json").read_text()).get("method", ""))
        except (OSError, ValueError, AttributeError):
            return ""
    return ""


def run_line(run: TrainProcess | None, method: str) -> str:
    """'training dpo: step 3/30 · ETA 1m 05s (F4)'; '' when no run is going."""
    if run is None or not run.running:
        return ""
    what = f"training {method}".rstrip()
    if run.cancel_requested:
        return f"{what}: cancelling after this step… (F4)"
    if not run.step:
        return f"{what}: starting… (F4)"
    return f"{what}: step {run.step}/{run.total_steps or '?'} · {eta_text(run.latest)} (F4)"
