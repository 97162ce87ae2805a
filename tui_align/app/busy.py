"""Writes the UI thread makes while another process holds the store's write lock: tried again on a timer.

The app's store waits only a blink for the lock (UI_WRITE_WAIT_S), so the screen never freezes behind
another tui-align's import; the write that didn't land stays pending here, with what the user typed or
picked, and is tried again with backoff until it does.
"""

from __future__ import annotations

from typing import Callable

from textual.widget import Widget

BUSY_NOTICE = "The store is busy (another tui-align is writing) — retrying"
# What one write on the UI thread waits for the lock before it goes pending.
UI_WRITE_WAIT_S = 0.05
FIRST_RETRY_S = 0.25
LAST_RETRY_S = 2.0


class BusyRetry:
    """At most one pending write for `owner` (a screen); `retry(write)` schedules it again after a pause
    that doubles each time, and tells the user once per busy spell."""

    def __init__(self, owner: Widget):
        self.owner = owner
        self.pending: Callable[[], None] | None = None
        self._pause = FIRST_RETRY_S
        self._timer = None

    @property
    def waiting(self) -> bool:
        """True while a write is pending; the screen keeps further writes back so they land in order."""
        return self.pending is not None

    def retry(self, write: Callable[[], None]) -> None:
        if self._pause == FIRST_RETRY_S:
            self.owner.notify(BUSY_NOTICE, severity="warning", timeout=LAST_RETRY_S * 2)
        self.pending = write
        self._timer = self.owner.set_timer(self._pause, self._again)
        self._pause = min(self._pause * 2, LAST_RETRY_S)

    def landed(self) -> None:
        """The write went through: the next busy spell starts over with a short pause and a notice."""
        self._pause = FIRST_RETRY_S

    def _again(self) -> None:
        write, self.pending = self.pending, None
        if write is not None:
            write()
