"""Cancel within a second, in every phase of a run, without ever leaving the weights half-updated.

Polling for a stop between steps is not enough: one CPU step, a reference pass, loading or converting
a model each take seconds to minutes. So the run marks the stretches that may be abandoned at any
moment (`interruptible()`: loading, tokenising, generating, the forward and backward of a step), and
SIGINT/SIGTERM raise `Cancelled` right there. The optimizer's update is never inside one:
`protect_rest_of_step()` says the step is being committed, and a stop waits for the loop to notice it
after the step. Nothing is lost by abandoning a step: its forward and backward change no weight.

A backward pass runs in C++ and never returns to the interpreter, so a signal would wait for it to end
(7 s for one CPU pass measured here). `check_during_backward(model)` hooks each layer's output: the
hooks run in Python between layers' gradients, where the signal is seen and the run checked.

`Cancelled` is a BaseException, like KeyboardInterrupt: the `except Exception` that turns a library's
failure into one error line must not turn a cancel into an error.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator


class Cancelled(BaseException):
    """The user asked the run to stop; raised where abandoning the work in hand is safe."""


_should_stop: Callable[[], bool] = lambda: False
_depth = 0  # how many interruptible() blocks the main thread is in
_committing = False  # an optimizer update has begun: the step finishes before any stop


class StopRequest:
    """SIGINT/SIGTERM's handler: sets the request, and raises Cancelled inside interruptible work.
    A second Ctrl-C stops at once, even mid-update (KeyboardInterrupt: no checkpoint then)."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if _depth > 0 and not _committing:
            raise Cancelled


@contextmanager
def watching(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Make `should_stop` the run's stop request for check() and interruptible() (one run at a time).
    A run that ends by an error in an update (a NaN in PPO's second epoch) leaves none pending after it."""
    global _should_stop
    previous, _should_stop = _should_stop, should_stop
    step_committed()
    try:
        yield
    finally:
        _should_stop = previous
        step_committed()


def check() -> None:
    """Raise Cancelled if a stop was requested and no update is being committed."""
    if not _committing and _should_stop():
        raise Cancelled


@contextmanager
def interruptible() -> Iterator[None]:
    """Work that a stop may abandon at any point: a signal raises Cancelled inside it."""
    global _depth
    check()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def protect_rest_of_step() -> None:
    """Called before an optimizer update: a stop from here on waits until the loop ends the step."""
    global _committing
    _committing = True


def step_committed() -> None:
    """The loop has recorded the step: stops may interrupt again."""
    global _committing
    _committing = False


def check_during_backward(model) -> list:
    """Let a backward pass be cancelled between layers: each decoder layer's output, when it needs a
    gradient, gets a hook that runs in Python when that gradient comes back. On the layers rather than
    the trainable tensors: which adapter trains changes during a PPO run. Returns the hook handles."""
    import torch  # here: the command that installs StopRequest starts without torch

    def on_gradient(grad):
        check()
        return grad

    def on_output(module, args, output):
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.register_hook(on_gradient)

    return [m.register_forward_hook(on_output) for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
