"""The stretches of a run before and between steps (loading, converting, tokenising, the base model's
answers), reported as `progress` events so the screen shows life from the first second.

Some of them advance in countable units (pairs tokenised); some are one opaque library call (loading a
model with transformers). Either way a timer thread sends a `progress` event every HEARTBEAT_S seconds
while the phase lasts, with the time so far, so a minute-long GGUF conversion never looks like a hang.
Every phase is interruptible: a cancel abandons it at once (cancel.py).
"""

from __future__ import annotations

import threading
import time

from . import cancel
from .events import EventSink

HEARTBEAT_S = 1.0  # the longest the screen goes without news during a phase
ADVANCE_EVERY_S = 0.5  # counted progress is reported at most this often


class Phase:
    """`with Phase(emit, "tokenising", "tokenising 1896 pairs", total=1896) as phase: ... phase.advance()`

    Events: progress(task, label, done, total, elapsed_s, eta_s, finished); total and eta_s are None for
    a phase that can't count its work.
    """

    def __init__(self, emit: EventSink, task: str, label: str, total: int | None = None):
        self.emit, self.task, self.label, self.total = emit, task, label, total
        self.done = 0
        self._started = self._reported = 0.0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._interruptible = cancel.interruptible()

    def __enter__(self) -> "Phase":
        self._started = time.monotonic()
        self._report()
        self._timer = threading.Thread(target=self._beat, name=f"progress-{self.task}", daemon=True)
        self._timer.start()
        self._interruptible.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self._interruptible.__exit__(kind, value, traceback)
        finally:
            self._stop.set()
            if self._timer is not None:
                self._timer.join(timeout=HEARTBEAT_S)
            if kind is None:
                if self.total is not None:
                    self.done = self.total
                self._report(finished=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._reported >= ADVANCE_EVERY_S:
            self._report()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._report()

    def _report(self, finished: bool = False) -> None:
        now = time.monotonic()
        self._reported = now
        elapsed = now - self._started
        eta = None
        if self.total and self.done and not finished:
            eta = round(elapsed / self.done * (self.total - self.done), 1)
        self.emit("progress", task=self.task, label=self.label, done=self.done, total=self.total,
                  elapsed_s=round(elapsed, 1), eta_s=eta, finished=finished)
