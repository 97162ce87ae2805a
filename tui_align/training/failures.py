"""Every way a run can fail, as the one-line message and kind its `error` event carries."""

from __future__ import annotations

from ..errors import UserError, first_line
from .run_folder import RunError

OOM_MESSAGE = "out of memory: lower --pass-tokens or --max-length, or add --gradient-checkpointing"


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for an exception from anywhere in a run."""
    import torch

    if isinstance(exc, RunError):
        return exc.kind, str(exc)
    if isinstance(exc, UserError):
        return "data", str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return "oom", OOM_MESSAGE
    if isinstance(exc, FloatingPointError):
        return "diverged", f"Training diverged: {exc}. Lower --lr; the last checkpoint (if any) is kept."
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return "disk", f"Couldn't write the run's files{where}: {exc.strerror or exc}. Earlier adapters are untouched."
    return "crash", first_line(exc)
