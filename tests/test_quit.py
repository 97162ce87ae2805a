"""Quitting is immediate, even while the model load waits on something that never answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

from conftest import settle
from fakes import ScriptedBackend

CHILD = textwrap.dedent("""
    import asyncio, sys, threading
    from tui_align.app import AlignApp
    from tui_align.store import Store

    never = threading.Event()
    def load():  # an unreachable hub: the load waits (here for good)
        never.wait()

    async def main():
        app = AlignApp(store=Store(sys.argv[1]), load_backend=load, home=sys.argv[2], model_label="blocked")
        async with app.run_test() as pilot:
            await pilot.pause(0.3)
            assert app.backend_state == "loading"
            print("quitting", flush=True)
            await pilot.press("ctrl+q")
    asyncio.run(main())
""")


def test_ctrl_q_while_the_model_loads_ends_the_process_within_a_second(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "s.sqlite3"), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "quitting\n", child.stderr.read()
        quit_at = time.monotonic()
        child.wait(timeout=10)
        took = time.monotonic() - quit_at
    finally:
        child.kill()
    assert child.returncode == 0, child.stderr.read()
    assert took < 1.0, f"the process lived {took:.1f} s after ctrl+q"


async def test_a_model_that_loads_after_the_app_quit_is_closed(make_app):
    import threading

    gate, loaded = threading.Event(), ScriptedBackend()

    def load():
        gate.wait(10)
        return loaded

    app = make_app(load=load)
    async with app.run_test() as pilot:
        await pilot.pause(0.1)
        assert app.backend_state == "loading"
    gate.set()
    deadline = time.monotonic() + 10
    while not loaded.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the late result reaches the (still running) test loop
    assert loaded.closed and app.backend is None


async def test_loading_still_ends_in_a_ready_model(make_app):
    backend = ScriptedBackend("hi")
    app = make_app(backend)
    async with app.run_test() as pilot:
        await settle(pilot)
        assert app.backend is backend and app.backend_state == "ready"
