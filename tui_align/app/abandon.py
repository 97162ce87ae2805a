"""Work the app may walk away from: a model load can't be interrupted, and quitting must not wait for it.

Textual's thread workers run in asyncio's default executor, which the event loop joins when it closes
(and Python again at exit): a load stuck on an unreachable hub kept the process alive 44 s after ctrl+q.
Here the work runs on a daemon thread and the worker only awaits its result, so cancelling the worker
(quitting, or a newer load) ends the wait at once; a result that comes after that is handed to
`abandoned` (to close a model nobody will use).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


async def in_daemon_thread(work: Callable[[], T], abandoned: Callable[[T], None] | None = None,
                           name: str = "tui-align-work") -> T:
    """`work()` on a daemon thread, awaited; its exception is raised here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def give_up(value) -> None:
        if abandoned is not None:
            abandoned(value)

    def deliver(ok: bool, value) -> None:
        if future.cancelled():
            if ok:
                give_up(value)
        elif ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            ok, value = True, work()
        except BaseException as exc:  # handed to the awaiting worker, which reports it
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:  # the loop is closed: the app has gone
            if ok:
                give_up(value)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
