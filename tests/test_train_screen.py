"""The train screen, driven with Pilot against fake training children (tiny scripts) and one real run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from textual.widgets import Checkbox, DataTable, Input, ProgressBar, RichLog, Select, Static

from tui_align.app import train_process
from tui_align.app.screens.adapters import AdaptersScreen
from tui_align.app.screens.train import TrainScreen, format_seconds
from tui_align.app.train_process import form_defaults, form_flags
from tui_align.errors import UserError
from tui_align.paths import adapters_dir
from tui_align.training import synthetic

from conftest import WAIT_S, wait_exited, wait_until
from fakes import STEPS_THEN_DONE, fake_child

SIZE = (110, 40)

ERROR_EVENT = """
    import json
    print(json.dumps({"event": "start", "total_steps": 5, "run_dir": "RUN"}), flush=True)
    print(json.dumps({"event": "error", "kind": "oom", "message": "CUDA out of memory: lower --batch-size"}))
    raise SystemExit(1)
"""

CRASH = """
    import sys
    sys.stderr.write("Traceback (most recent call last):\\n  boom\\nRuntimeError: segfault-ish\\n")
    raise SystemExit(1)
"""

STEPS_WHEN_RELEASED = """
    import json, signal, sys
    open(sys.argv[0] + ".argv", "a").write(json.dumps(sys.argv[1:]) + "\\n")
    class Cancelled(Exception):
        pass
    def cancel(*_):  # raising, so that the blocked read below gives up (a plain handler would be retried)
        raise Cancelled
    signal.signal(signal.SIGINT, cancel)
    def say(**e): print(json.dumps(e), flush=True)
    say(event="start", total_steps=1000, run_dir="RUNDIR")
    step = 0
    try:
        with open(sys.argv[0] + ".gate", "rb", buffering=0) as gate:
            while step < 1000 and gate.read(1):  # one step per byte the test writes
                step += 1
                say(event="step", step=step, total_steps=1000, loss=1.0, accuracy=0.5)
    except Cancelled:
        pass
    say(event="checkpoint", step=step, path="RUNDIR/checkpoint")
    say(event="done", run_dir="RUNDIR", metrics={}, seconds=0.1, cancelled=True)
    raise SystemExit(130)
"""


@pytest.fixture
def store(store):
    store.add_pairs(synthetic.trait_pairs(6, "prefix"))
    return store


class ChildGate:
    """The FIFO STEPS_WHEN_RELEASED reads one byte from per step: the test decides how far the child gets,
    so a wait for step n can't be overshot by a child that runs on."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDWR)  # a writer from the start, so the child's open never blocks

    def release(self, steps: int) -> None:
        os.write(self._fd, b"." * steps)

    def close(self) -> None:
        os.close(self._fd)  # a child still reading sees the end of the gate and stops


@pytest.fixture
def gated_child(monkeypatch, tmp_path):
    """(script, gate): the screen runs STEPS_WHEN_RELEASED, which steps only when the gate lets it."""
    script = fake_child(monkeypatch, tmp_path, STEPS_WHEN_RELEASED)
    gate = ChildGate(Path(f"{script}.gate"))
    yield script, gate
    gate.close()


async def open_train(pilot) -> TrainScreen:
    await pilot.press("f4")
    await pilot.pause()
    assert isinstance(pilot.app.screen, TrainScreen)
    return pilot.app.screen


async def run_to_end(pilot, screen: TrainScreen, timeout: float = WAIT_S) -> None:
    await pilot.press("ctrl+g")
    await wait_exited(pilot, screen.train_run, timeout)


async def wait_for_step(pilot, screen: TrainScreen, step: int) -> None:
    await wait_until(pilot, lambda: screen.train_run.step == step, f"the run reached step {step}")


def log_text(screen) -> str:
    return "\n".join(strip.text for strip in screen.query_one("#train-log", RichLog).lines)


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


def warnings(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "warning"]


def child_calls(script) -> list[list[str]]:
    """The argv (after the program) of every start of the fake child, in order."""
    path = script.with_name("child.py.argv")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stopped_run(home: Path, name: str, status: str = "cancelled", checkpoint: bool = True) -> Path:
    """A run folder as a cancelled or crashed run leaves it in a past session (the fake child reads none of it)."""
    folder = adapters_dir(home) / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"method": "dpo", "status": status,
                                                 "created_at": "2026-11-24T12:00:00+00:00"}))
    if checkpoint:
        (folder / "checkpoint").mkdir()
        (folder / "checkpoint" / "state.json").write_text('{"step": 5}')
    return folder


async def open_adapters(pilot, row: int = 0) -> AdaptersScreen:
    await pilot.press("f6")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, AdaptersScreen)
    screen.query_one(DataTable).move_cursor(row=row)
    await pilot.pause()
    return screen


def resume_enabled(screen: AdaptersScreen) -> bool:
    """Whether the footer shows ctrl+o Resume lit (True) or dimmed (False) for the selected run."""
    binding = screen.active_bindings["ctrl+o"]
    assert binding.binding.action == "resume"
    return binding.enabled


def test_form_flags_parse_and_name_the_bad_field():
    flags = form_flags("orpo", {**form_defaults(), "max-steps": "7", "lr": "1e-4"})
    assert flags[:2] == ["--method", "orpo"]
    assert flags[flags.index("--max-steps") + 1] == "7" and flags[flags.index("--lr") + 1] == "0.0001"
    assert "--max-steps" not in form_flags("dpo", form_defaults())  # optional and empty: left to epochs
    for name, value, words in [("batch-size", "two", "argument --batch-size: invalid int value: 'two'"),
                               ("eval-fraction", "1", "--eval-fraction must be in [0, 1)"),
                               ("max-length", "8", "--max-length must be at least 16"),
                               ("lr", "0", "--lr must be positive")]:
        with pytest.raises(UserError, match=words.replace("[", r"\[").replace(")", r"\)")):
            form_flags("dpo", {**form_defaults(), name: value})


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 125, 3725, None)] == ["5s", "2m 05s", "1h 02m", "?"]


async def test_a_run_shows_progress_metrics_and_the_done_line(make_app, store, tmp_path, monkeypatch, private_home):
    script = fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    app = make_app(model_spec="/models/x.gguf")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        assert "6 pairs" in str(screen.query_one("#train-pairs", Static).render())
        screen.query_one("#method", Select).value = "orpo"
        screen.query_one("#field-max-steps", Input).value = "3"
        await run_to_end(pilot, screen)
        bar = screen.query_one("#train-progress", ProgressBar)
        assert (bar.progress, bar.total) == (3, 3)
        metrics = str(screen.query_one("#train-metrics", Static).render())
        assert "loss 0.4" in metrics and "accuracy 0.8" in metrics and "123 tokens/s" in metrics
        assert "held out: loss 0.5  accuracy 0.75" in metrics
        assert (screen.train_run.loss_steps, screen.train_run.losses) == ([1, 2, 3], pytest.approx([0.6, 0.5, 0.4]))
        plot = screen.query_one("#train-plot").plt
        drawn = plot.build()
        assert "held-out loss" in drawn and "held-out accuracy" in drawn and "step" in drawn
        log = log_text(screen)
        assert "a stray line that is not JSON" in log and "done in 1 s: RUN" in log and "eval @ step 3" in log
        assert screen.train_run.status == "completed" and not errors(app)
    argv = json.loads(script.with_name("child.py.argv").read_text())
    assert argv[:3] == ["--jsonl", "--home", str(private_home)]
    assert argv[argv.index("--method") + 1] == "orpo" and argv[argv.index("--max-steps") + 1] == "3"
    assert argv[-2:] == ["--model", "/models/x.gguf"]
    assert store.count_pairs() == 6


PPO_STEPS = """
    import json
    print(json.dumps({"event": "start", "total_steps": 4, "run_dir": "RUN"}), flush=True)
    for step, phase in ((1, "reward_model"), (2, "sft")):
        print(json.dumps({"event": "step", "step": step, "total_steps": 4, "phase": phase, "loss": 0.5}), flush=True)
    for step, reward, kl in ((3, 0.2, 0.01), (4, 0.9, 0.4)):
        print(json.dumps({"event": "step", "step": step, "total_steps": 4, "phase": "ppo", "loss": 0.0,
                          "reward": reward, "kl": kl}), flush=True)
    print(json.dumps({"event": "eval", "phase": "policy", "step": 4, "reward": 0.8, "sampled_reward": 0.7}), flush=True)
    print(json.dumps({"event": "done", "run_dir": "RUN", "status": "completed", "elapsed_s": 1}), flush=True)
"""


async def test_ppo_plots_the_sampled_reward_and_the_kl_per_step(make_app, store, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, PPO_STEPS)
    app = make_app(model_spec="/models/x.gguf")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        screen.query_one("#method", Select).value = "ppo"
        await run_to_end(pilot, screen)
        assert screen.train_run.ppo_points == [(3, 0.2, 0.01), (4, 0.9, 0.4)]
        drawn = screen.query_one("#train-plot").plt.build()
        assert "reward (sampled)" in drawn and "KL" in drawn and "held-out reward" in drawn
        assert not errors(app)


async def test_a_bad_form_value_starts_nothing(make_app, store, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        screen.query_one("#field-epochs", Input).value = "0"
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert screen.train_run is None and errors(pilot.app) == ["--epochs must be at least 1"]


async def test_an_error_event_is_one_error_line(make_app, store, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, ERROR_EVENT)
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await run_to_end(pilot, screen)
        assert errors(pilot.app) == ["out of memory: CUDA out of memory: lower --batch-size"]
        assert "error (oom): CUDA out of memory" in log_text(screen)
        assert screen.train_run.can_resume and not screen.query_one("#resume").disabled


async def test_a_crash_without_events_points_at_the_log(make_app, store, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, CRASH)
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await run_to_end(pilot, screen)
        log_path = screen.train_run.log_path
        assert errors(pilot.app) == [f"training crashed (exit 1) — see {log_path}"]
        assert "RuntimeError: segfault-ish" in log_path.read_text()
        assert "Traceback" not in log_text(screen)
    assert store.count_pairs() == 6


async def test_a_child_that_cannot_start_is_one_error_line(make_app, store, tmp_path, monkeypatch):
    monkeypatch.setattr(train_process, "train_command", lambda: [str(tmp_path / "no-such-program")])
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert errors(pilot.app) == ["Couldn't start training: No such file or directory"]
        assert screen.train_run.status == "failed" and not screen.query_one("#start").disabled


async def test_cancel_signals_the_child_and_resume_continues_its_run(make_app, store, gated_child):
    script, gate = gated_child
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await pilot.press("ctrl+g")
        gate.release(3)
        await wait_for_step(pilot, screen, 3)
        # Training goes on while the user chats; coming back shows the progress so far.
        await pilot.press("f2")
        gate.release(5)
        await wait_for_step(pilot, screen, 8)
        await pilot.press("f4")
        await pilot.pause()
        assert pilot.app.screen is screen
        assert screen.query_one("#train-progress", ProgressBar).progress == 8
        await pilot.press("escape")
        run = screen.train_run
        await wait_exited(pilot, run)
        assert (run.status, run.returncode, run.run_dir, run.step) == ("cancelled", 130, "RUNDIR", 8)
        assert "cancelled (resumable)" in log_text(screen) and not errors(pilot.app)
        await pilot.click("#resume")
        await wait_until(pilot, lambda: screen.train_run is not run, "the resumed run started")
        gate.release(1)
        await wait_for_step(pilot, screen, 1)
        await pilot.press("escape")
        await wait_exited(pilot, screen.train_run)
    calls = child_calls(script)
    assert len(calls) == 2 and calls[1][-2:] == ["--resume", "RUNDIR"]


async def test_quitting_the_app_cancels_a_running_child(make_app, store, gated_child):
    _, gate = gated_child
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await pilot.press("ctrl+g")
        gate.release(1)
        await wait_for_step(pilot, screen, 1)
        process = screen.train_run.process
    assert process.poll() == 130  # stopped cleanly (it saved its checkpoint), not killed


async def train_two_steps(pilot, timeout: float) -> TrainScreen:
    """From the Train screen, a real run of 2 steps at batch 2, to its end; it must complete."""
    screen = await open_train(pilot)
    screen.query_one("#field-max-steps", Input).value = "2"
    screen.query_one("#field-batch-size", Input).value = "2"
    await run_to_end(pilot, screen, timeout=timeout)
    run = screen.train_run
    assert run.status == "completed", (run.error, run.log_path.read_text()[-2000:])
    return screen


async def test_real_training_child_runs_two_steps(make_app, store, tiny_model_dir, private_home):
    """The real `python -m tui_align.train_command` on a tiny model, from the screen, to `done`."""
    async with make_app(model_spec=str(tiny_model_dir)).run_test(size=SIZE) as pilot:
        screen = await train_two_steps(pilot, timeout=90)
        run = screen.train_run
        assert run.step == 2 and len(run.losses) == 2 and not errors(pilot.app)
        assert "done" in log_text(screen)
        assert private_home in Path(run.run_dir).parents


async def test_resume_from_the_adapters_screen_continues_a_run_of_an_earlier_session(
        make_app, store, tmp_path, monkeypatch, private_home):
    """After a restart the train screen knows no run; the adapters screen resumes one that has a checkpoint."""
    script = fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    stopped_run(private_home, "20261124-120000-dpo", status="completed", checkpoint=False)
    folder = stopped_run(private_home, "20261123-090000-dpo", status="cancelled")
    async with make_app().run_test(size=SIZE) as pilot:
        adapters = await open_adapters(pilot, row=0)
        assert not resume_enabled(adapters)  # a completed run: dimmed
        adapters.query_one(DataTable).move_cursor(row=1)
        await pilot.pause()
        assert resume_enabled(adapters)
        await pilot.press("ctrl+o")
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, TrainScreen) and screen.train_run is not None
        await wait_exited(pilot, screen.train_run)
        bar = screen.query_one("#train-progress", ProgressBar)
        assert (bar.progress, bar.total) == (3, 3) and screen.train_run.status == "completed"
        assert screen.train_run.log_lines[0].endswith(f"--resume {folder}")  # the log pane wraps it
        assert "held out: loss 0.5" in str(screen.query_one("#train-metrics", Static).render())
        assert not errors(pilot.app) and not warnings(pilot.app)
    assert child_calls(script) == [["--jsonl", "--home", str(private_home), "--resume", str(folder)]]


async def test_resume_is_refused_while_a_run_is_going_and_without_a_checkpoint(
        make_app, store, gated_child, private_home):
    script, gate = gated_child
    stopped_run(private_home, "20261124-120000-dpo", status="failed", checkpoint=False)  # failed while loading
    stopped_run(private_home, "20261123-090000-dpo", status="cancelled")
    async with make_app().run_test(size=SIZE) as pilot:
        adapters = await open_adapters(pilot, row=0)
        assert not resume_enabled(adapters)
        await pilot.press("ctrl+o")  # dimmed, but the key says why rather than nothing
        await pilot.pause()
        assert pilot.app.screen is adapters
        assert warnings(pilot.app) == ["20261124-120000-dpo stopped before saving a checkpoint: nothing to resume; "
                                       "start a new run on Train (F4)."]
        pilot.app.clear_notifications()

        train = await open_train(pilot)
        await pilot.press("ctrl+g")
        gate.release(1)
        await wait_for_step(pilot, train, 1)
        running = train.train_run
        adapters = await open_adapters(pilot, row=1)
        assert resume_enabled(adapters)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert pilot.app.screen is adapters and train.train_run is running and running.running
        assert warnings(pilot.app) == ["A training run is already going: wait for it or cancel it on Train (F4) "
                                       "first."]
        await open_train(pilot)
        await pilot.press("escape")
        await wait_exited(pilot, running)
        assert not errors(pilot.app)
    assert len(child_calls(script)) == 1 and "--resume" not in child_calls(script)[0]


async def test_the_low_memory_switch_adds_gradient_checkpointing(make_app, store, tmp_path, monkeypatch):
    assert "--gradient-checkpointing" not in form_flags("dpo", form_defaults())
    assert form_flags("dpo", form_defaults(), low_memory=True)[-1] == "--gradient-checkpointing"
    script = fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        assert not screen.query_one("#low-memory", Checkbox).value
        await pilot.click("#low-memory")
        assert screen.query_one("#low-memory", Checkbox).value
        await run_to_end(pilot, screen)
        assert screen.train_run.status == "completed" and not errors(pilot.app)
    argv = json.loads(script.with_name("child.py.argv").read_text())
    assert "--gradient-checkpointing" in argv and argv[argv.index("--method") + 1] == "dpo"


async def test_the_precision_select_passes_a_forced_precision(make_app, store, tmp_path, monkeypatch):
    assert "--precision" not in form_flags("dpo", form_defaults())  # auto is the child's own default
    assert form_flags("dpo", form_defaults(), precision="bf16")[-2:] == ["--precision", "bf16"]
    with pytest.raises(UserError, match="argument --precision: invalid choice: 'fp8'"):
        form_flags("dpo", form_defaults(), precision="fp8")
    script = fake_child(monkeypatch, tmp_path, STEPS_THEN_DONE)
    async with make_app().run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        select = screen.query_one("#precision", Select)
        assert select.value == "auto"
        select.value = "float32"
        await pilot.pause()
        await run_to_end(pilot, screen)
        assert screen.train_run.status == "completed" and not errors(pilot.app)
    argv = json.loads(script.with_name("child.py.argv").read_text())
    assert argv[argv.index("--precision") + 1] == "float32"


ANSWERS_BREAK_DOWN = """
    import json, sys
    def say(**e): print(json.dumps(e), flush=True)
    say(event="start", config={"method": "dpo"}, train_pairs=32, eval_pairs=4, total_steps=30, run_dir="RUN")
    say(event="defaults", message="defaults: max_steps 30 (small sets get at least 30)")
    say(event="baseline", prompts=4, message="writing the base model's answers to 4 held-out prompts")
    sound = dict(verdict="sound", of=4, changed=4, repeating=0, length_ratio=1.0,
                 message="4 of 4 held-out answers changed, none repeats itself.")
    for step in range(1, 17):
        say(event="step", step=step, total_steps=30, epoch=step / 8, loss=0.5)
        if step == 8:
            say(event="answers", step=8, **sound)
    say(event="answers", step=16, verdict="repeats", of=4, changed=4, repeating=2, length_ratio=0.9,
        message="2 of 4 held-out answers repeat themselves: the run overfit. Try --lr 5e-05.")
    KEPT
"""
EARLY_STOP = """say(event="early_stop", step=16, kept_step=8, message="stopped at step 16: kept the adapter of step 8")
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0, answer_check=dict(step=8, **sound))"""
NO_EARLIER_SOUND = """say(event="done", run_dir="RUN", metrics={}, seconds=1.0, answer_check=None)"""


async def test_the_screen_says_whether_the_answers_held_and_what_the_run_kept(make_app, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, ANSWERS_BREAK_DOWN.replace("KEPT", EARLY_STOP))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        verdict = screen.query_one("#train-verdict", Static)
        assert not verdict.display  # nothing to say before a check
        await run_to_end(pilot, screen)
        await pilot.pause()
        assert verdict.display and not verdict.has_class("-warning")
        assert str(verdict.render()).startswith("Answers (the kept adapter): 4 of 4 held-out answers changed")
        log = log_text(screen)
        assert "defaults: defaults:" not in log and "defaults: max_steps 30" in log
        assert "answers @ step 16: repeats: 2 of 4" in log and "early stop: stopped at step 16" in log


async def test_answers_that_broke_down_stay_on_screen_as_a_warning(make_app, tmp_path, monkeypatch):
    fake_child(monkeypatch, tmp_path, ANSWERS_BREAK_DOWN.replace("KEPT", NO_EARLIER_SOUND))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await run_to_end(pilot, screen)
        await pilot.pause()
        verdict = screen.query_one("#train-verdict", Static)
        assert verdict.display and verdict.has_class("-warning")
        assert "2 of 4 held-out answers repeat themselves: the run overfit. Try --lr 5e-05." in str(verdict.render())


PHASES_THEN_A_STEP = """
    import json, sys
    def say(**e): print(json.dumps(e), flush=True)
    def phase(task, label, done, total, **more):
        say(event="progress", task=task, label=label, done=done, total=total, elapsed_s=2.0, **more)
    phase("loading", "loading tiny", 0, None, eta_s=None, finished=False)
    with open(sys.argv[0] + ".gate", "rb", buffering=0) as gate:
        gate.read(1)
        phase("loading", "loading tiny", 0, None, eta_s=None, finished=True)
        phase("tokenising", "tokenising 12 pairs", 3, 12, eta_s=6.0, finished=False)
        gate.read(1)
        say(event="start", total_steps=2, run_dir="RUN", config={"method": "dpo"})
        say(event="step", step=1, total_steps=2, loss=0.6)
        gate.read(1)
    say(event="step", step=2, total_steps=2, loss=0.5)
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0, cancelled=False)
"""


async def test_the_phases_before_the_first_step_show_as_a_labelled_bar(make_app, store, tmp_path, monkeypatch):
    script = fake_child(monkeypatch, tmp_path, PHASES_THEN_A_STEP)
    gate = ChildGate(Path(f"{script}.gate"))
    app = make_app()
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_train(pilot)
            steps_bar = screen.query_one("#train-progress", ProgressBar)
            label, phase_bar = screen.query_one("#phase-label", Static), screen.query_one("#phase-progress", ProgressBar)
            assert not steps_bar.display and not phase_bar.display  # no run, no bar at all
            await pilot.press("ctrl+g")
            await wait_until(pilot, lambda: screen.train_run.phase.get("task") == "loading", "the loading phase")
            await pilot.pause()
            assert "starting: loading tiny" in str(screen.query_one("#train-status", Static).render())
            assert label.display and "loading tiny… 2s so far" in str(label.render()) and not steps_bar.display
            gate.release(1)
            await wait_until(pilot, lambda: screen.train_run.phase.get("task") == "tokenising", "tokenising")
            await pilot.pause()
            assert "tokenising 12 pairs: 3/12, ETA 6s" in str(label.render())
            assert (phase_bar.progress, phase_bar.total) == (3, 12)
            gate.release(1)
            await wait_for_step(pilot, screen, 1)
            await pilot.pause()
            assert not label.display and not phase_bar.display and steps_bar.display
            assert "loading tiny: done in 2 s" in log_text(screen)
            gate.release(1)
            await wait_exited(pilot, screen.train_run)
    finally:
        gate.close()
