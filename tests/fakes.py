"""Stand-ins for the model, so UI tests run in milliseconds without loading anything."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Iterator

from tui_align.backends.base import Backend, SamplingSettings, StopCheck
from tui_align.pairs import Message


class ScriptedBackend(Backend):
    """Replays queued replies word by word; records every request it was given.

    `delay` sleeps before each piece (to test stopping); with the queue empty it answers `default`.
    """

    engine = "scripted"

    def __init__(self, *replies: str, delay: float = 0.0, default: str = "(no scripted reply)",
                 model_id: str = "scripted-model"):
        self.replies: deque[str] = deque(replies)
        self.delay = delay
        self.default = default
        self.model_id = model_id
        self.requests: list[tuple[list[Message], SamplingSettings]] = []
        self.pieces_sent = 0
        self.closed = False
        self.started = threading.Event()  # set when a generation begins (tests wait on it)

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        self.requests.append(([dict(m) for m in messages], settings))
        reply = self.replies.popleft() if self.replies else self.default
        self.started.set()
        for piece in re.findall(r"\S+\s*", reply):
            if self.delay:
                time.sleep(self.delay)
            if should_stop is not None and should_stop():
                return
            self.pieces_sent += 1
            yield piece

    def close(self) -> None:
        self.closed = True


class FailingBackend(Backend):
    """Raises `error` as soon as it is asked to generate (after yielding `before`, if any)."""

    engine = "failing"
    model_id = "failing-model"

    def __init__(self, error: Exception, before: str = ""):
        self.error = error
        self.before = before

    def stream_chat(self, messages, settings, should_stop=None):
        if self.before:
            yield self.before
        raise self.error
