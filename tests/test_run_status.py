"""A training run seen from the chat screen: its status line shows the run (method, step k/N, ETA) while
it goes on, and the run's end is a notification on whatever screen the user is on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input
from textual.widgets._toast import Toast

from tui_align.app.run_status import run_line, run_method
from tui_align.app.screens.chat import ChatScreen
from tui_align.app.screens.train import TrainScreen
from tui_align.app.train_process import TrainProcess
from tui_align.app.widgets.status_bar import StatusBar
from tui_align.training import synthetic

from conftest import settle, wait_exited, wait_until
from fakes import STEPS_THEN_DONE, ScriptedBackend, fake_child
from test_train_screen import ChildGate

SIZE = (160, 30)

# Steps only when the test writes a byte to the gate; ends (done) when the gate closes.
GATED_STEPS = """
    import json, sys
    def say(**e): print(json.dumps(e), flush=True)
    say(event="start", config={"method": "orpo"}, total_steps=30, run_dir="RUN")
    step = 0
    with open(sys.argv[0] + ".gate", "rb", buffering=0) as gate:
        while step < 30 and gate.read(1):
            step += 1
            say(event="step", step=step, total_steps=30, loss=1.0, eta_s=65)
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0)
"""


@pytest.fixture
def store(store):
    store.add_pairs(synthetic.trait_pairs(6, "prefix"))
    return store


def status(app) -> str:
    return str(app.get_screen("chat").query_one(StatusBar).render())


def toasts(app) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query(Toast)]


def test_a_phase_of_a_longer_run_gives_its_own_eta_and_says_so(monkeypatch, tmp_path):
    """PPO's reward model steps cost a third of its PPO steps: its rate times the run's remaining steps said
    half of what was left, so the phase's ETA is to its own last step, named; the last phase's is the run's."""
    from tui_align.training import loop

    clock = iter([100.0, 104.0, 200.0, 230.0])
    monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
    reward = loop.Progress(0, 84, phase_end=30, phase="reward model")
    fields = reward.fields(2, tokens=10)  # 2 steps in 4 s: 28 left of the phase
    assert fields["eta_s"] == 56.0 and fields["eta_of"] == "reward model"
    ppo = loop.Progress(54, 84, phase_end=84, phase="ppo")  # the run's last phase: its end is the run's
    fields = ppo.fields(55, tokens=10)  # 1 step in 30 s, 29 left
    assert fields["eta_s"] == 870.0 and "eta_of" not in fields

    run = TrainProcess(argv=["python", "-m", "x", "--jsonl", "--method", "ppo"], log_path=tmp_path / "log")
    run.record_line(json.dumps({"event": "step", "step": 2, "total_steps": 84, "eta_s": 56, "eta_of": "reward model"}))
    assert run_line(run, "ppo") == "training ppo: step 2/84 · ETA 56s for the reward model (F4)"
    assert "ETA 56s for the reward model" in TrainScreen.metrics_text(run)


def test_the_line_names_the_method_the_step_and_the_eta(tmp_path):
    run = TrainProcess(argv=["python", "-m", "x", "--jsonl", "--method", "dpo"], log_path=tmp_path / "log")
    assert run_method(run) == "dpo"
    assert run_line(run, "dpo") == "training dpo: starting… (F4)"
    run.record_line(json.dumps({"event": "step", "step": 3, "total_steps": 30, "eta_s": 65}))
    assert run_line(run, "dpo") == "training dpo: step 3/30 · ETA 1m 05s (F4)"
    run.finish(0)
    assert run_line(run, "dpo") == ""

    folder = tmp_path / "RUN"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"method": "ppo", "status": "cancelled"}))
    resumed = TrainProcess(argv=["python", "-m", "x", "--jsonl", "--resume", str(folder)], log_path=tmp_path / "l")
    assert run_method(resumed) == "ppo"


async def test_the_chat_status_follows_a_run_and_its_end_is_a_notification_on_chat(make_app, monkeypatch, tmp_path):
    script = fake_child(monkeypatch, tmp_path, GATED_STEPS)
    gate = ChildGate(Path(f"{script}.gate"))
    app = make_app(ScriptedBackend("Sure."))
    try:
        async with app.run_test(size=SIZE, notifications=True) as pilot:  # toasts drawn, as in a terminal
            await settle(pilot)
            await pilot.press("f4", "ctrl+g", "f2")
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen)
            run = app.get_screen("train").train_run
            await wait_until(pilot, lambda: "training dpo: starting" in status(app), "the chat shows the run")
            gate.release(3)
            await wait_until(pilot, lambda: run.step == 3, "the run reached step 3")
            await wait_until(pilot, lambda: "step 3/30 · ETA 1m 05s" in status(app), "the chat shows step 3")
            # Chatting goes on meanwhile.
            app.screen.query_one("#message", Input).value = "Hello"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen.session.turns[-1]["content"] == "Sure.", "the answer")
            gate.close()
            await wait_exited(pilot, run)
            await pilot.pause()
            assert isinstance(app.screen, ChatScreen) and "training" not in status(app)
            assert any("Training done" in text for text in toasts(app))  # shown here, not only on Train
    finally:
        try:
            gate.close()
        except OSError:
            pass


async def test_a_run_that_ends_while_the_user_compares_is_announced_there(make_app, monkeypatch, tmp_path):
    fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    app = make_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:  # toasts drawn, as in a terminal
        await settle(pilot)
        await pilot.press("f4", "ctrl+g", "f5")
        await wait_exited(pilot, app.get_screen("train").train_run)
        assert type(app.screen).__name__ == "CompareScreen"
        await pilot.pause()
        assert any("Training done" in text for text in toasts(app))
