"""Stand-ins for the model and the training child, so UI tests run in milliseconds without loading anything."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tui_align.app import train_process
from tui_align.backends.base import Backend, Chunk, SamplingSettings, StopCheck
from tui_align.pairs import Message

# Seconds a test waits for the app's worker to reach a point before it fails saying which.
WAIT_S = 10.0
# How often a gated stream, waiting for the test, checks whether the app asked it to stop: the app's stop
# request and a cancelled worker set no event of ours, just as a real model only notices between tokens.
STOP_CHECK_S = 0.01
# A gated stream that waited this long for a test gives up: that test has failed already, and a worker thread
# that never ends would keep pytest from exiting.
GIVE_UP_S = 60.0


class ScriptedBackend(Backend):
    """Replays queued replies word by word (a word is a token: max_tokens cuts there); records every request
    it was given. With the queue empty it answers `default`.

    N candidates stream as a batched engine writes them (`batches`, the default): one word of each live
    candidate per step, in slot order; with batches=False one after the other.
    """

    engine = "scripted"

    def __init__(self, *replies: str, default: str = "(no scripted reply)", model_id: str = "scripted-model",
                 batches: bool = True):
        self.batches_candidates = batches
        self.replies: deque[str] = deque(replies)
        self.default = default
        self.model_id = model_id
        self.requests: list[tuple[list[Message], SamplingSettings]] = []
        self.pieces_sent = 0
        self.closed = False
        self.started = threading.Event()  # set when a generation begins

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        pieces = self._pieces(messages, settings, should_stop)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                return end.value
            yield piece
            self._handed_over()

    def _pieces(self, messages, settings, should_stop) -> Iterator[str]:
        """The reply's words, gated; returns why it ended."""
        self.requests.append(([dict(m) for m in messages], settings))
        reply = self.replies.popleft() if self.replies else self.default
        self.started.set()
        try:
            for count, piece in enumerate(re.findall(r"\S+\s*", reply)):
                if count == settings.max_tokens:
                    return "length"
                if not self._may_send(should_stop) or (should_stop is not None and should_stop()):
                    return "stopped"
                self.pieces_sent += 1
                yield piece
            return "eos"
        finally:
            self._ended()

    def stream_candidates(
        self, messages: list[Message], settings_list: Sequence[SamplingSettings], should_stop: StopCheck
    ) -> Iterator[Chunk]:
        if not self.batches_candidates:
            yield from super().stream_candidates(messages, settings_list, should_stop)
            return
        streams = {slot: self._pieces(messages, settings, should_stop) for slot, settings in enumerate(settings_list)}
        while streams:
            for slot, stream in list(streams.items()):  # one step: a word for each live candidate
                try:
                    piece = next(stream)
                except StopIteration as end:
                    del streams[slot]
                    yield Chunk(slot, finished=end.value)
                    continue
                yield Chunk(slot, piece)
                self._handed_over()

    def count_tokens(self, messages: list[Message]) -> int | None:
        """A word is a token here, as in the replies; no chat template around them."""
        return sum(len(re.findall(r"\S+\s*", m["content"])) for m in messages)

    # Hooks for GatedBackend: a scripted stream never waits.
    def _may_send(self, should_stop: StopCheck | None) -> bool:
        return True

    def _handed_over(self) -> None:
        pass

    def _ended(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class GatedBackend(ScriptedBackend):
    """A ScriptedBackend whose stream sends a piece only when the test lets it through.

    The test and the app's generation worker meet at points the test names, never at a clock: `release(n)`
    lets n more pieces through, `release_all()` every piece from then on; `wait_started()`,
    `wait_handed_over(n)` and `wait_finished()` return once the worker got there (waiting in a thread, so the
    app's event loop keeps running) and fail saying what never happened. While a stream waits for the test
    it still stops as soon as the app asks, as a real model does between two tokens.
    """

    engine = "gated"

    def __init__(self, *replies: str, **kwargs):
        super().__init__(*replies, **kwargs)
        self._state = threading.Condition()
        self._allowed = 0  # pieces released and not sent yet
        self._open = False
        self.handed_over = 0  # pieces the app took and came back for more (or ended the stream) after
        self.finished = 0  # streams that ended: every piece sent, stopped, or abandoned

    def release(self, count: int = 1) -> None:
        with self._state:
            self._allowed += count
            self._state.notify_all()

    def release_all(self) -> None:
        with self._state:
            self._open = True
            self._state.notify_all()

    def _may_send(self, should_stop: StopCheck | None) -> bool:
        give_up = time.monotonic() + GIVE_UP_S
        with self._state:
            while not (self._open or self._allowed):
                if self.closed or (should_stop is not None and should_stop()) or time.monotonic() > give_up:
                    return False
                self._state.wait(STOP_CHECK_S)
            if not self._open:
                self._allowed -= 1
            return True

    def _handed_over(self) -> None:
        with self._state:
            self.handed_over += 1
            self._state.notify_all()

    def _ended(self) -> None:
        with self._state:
            self.finished += 1
            self._state.notify_all()

    def close(self) -> None:
        with self._state:
            super().close()
            self._state.notify_all()

    async def wait_started(self, timeout: float = WAIT_S) -> None:
        if not await asyncio.to_thread(self.started.wait, timeout):
            raise AssertionError(f"gave up after {timeout:g} s waiting for a generation to start")

    async def wait_handed_over(self, count: int, timeout: float = WAIT_S) -> None:
        """Until the app has taken `count` pieces in all (it came back for the next one, so it has posted
        what it got)."""
        await self._wait(lambda: self.handed_over >= count, timeout, f"the app to take {count} pieces")

    async def wait_finished(self, count: int = 1, timeout: float = WAIT_S) -> None:
        await self._wait(lambda: self.finished >= count, timeout, f"{count} stream(s) to end")

    async def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        def wait() -> bool:
            with self._state:
                return self._state.wait_for(done, timeout)

        if not await asyncio.to_thread(wait):
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what} "
                                 f"({self.pieces_sent} pieces sent, {self.finished} streams ended)")


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


# The training child ---------------------------------------------------------------------------

# A child that trains three steps, evaluates and is done (writing its argv beside itself).
STEPS_THEN_DONE = """
    import json, sys
    open(sys.argv[0] + ".argv", "w").write(json.dumps(sys.argv[1:]))
    def say(**e): print(json.dumps(e), flush=True)
    say(event="start", config={"method": "dpo"}, train_pairs=4, eval_pairs=1, total_steps=3, device="cpu",
        run_dir="RUN")
    print("a stray line that is not JSON", flush=True)
    for step in (1, 2, 3):
        say(event="step", step=step, total_steps=3, epoch=1, loss=0.7 - 0.1 * step, accuracy=0.5 + 0.1 * step,
            margin=0.1 * step, tokens_per_s=123.0, eta_s=3 - step)
    say(event="eval", step=3, accuracy=0.75, margin=0.2, loss=0.5)
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0)
"""


def fake_child(monkeypatch, folder: Path, source: str) -> Path:
    """Make the app run `source` (a python script, saved as `folder`/child.py) instead of
    `python -m tui_align.train_command`."""
    script = folder / "child.py"
    script.write_text(textwrap.dedent(source))
    monkeypatch.setattr(train_process, "train_command", lambda: [sys.executable, str(script)])
    return script
