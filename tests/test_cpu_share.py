"""CPU threads from how busy the machine is (cpu_share.py): a chat answer takes the cores that are free,
and the app's own training run lends it half of its threads for the length of each answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from textual.widgets import Input

from tui_align import cpu_share
from tui_align.app.train_process import TrainProcess
from tui_align.training import synthetic

from conftest import settle, wait_exited, wait_until
from fakes import ScriptedBackend, fake_child
from test_train_screen import ChildGate


def test_an_answer_takes_every_free_core_and_only_those():
    assert cpu_share.free_threads(2, 0.0) == 2  # idle: 2 threads answered in 0.50 s against 0.87 s on 1
    assert cpu_share.free_threads(8, 0.1) == 8
    assert cpu_share.free_threads(2, 2.0) == 1  # a run keeps both cores: never below one thread
    assert cpu_share.free_threads(2, 1.6) == 1  # less than 3/4 of a core free is not a core
    assert cpu_share.free_threads(2, 1.2) == 1
    assert cpu_share.free_threads(2, 0.2) == 2
    assert cpu_share.free_threads(8, 3.0) == 5
    # our own run lends its share: it is counted busy, and frees what it lends
    assert cpu_share.free_threads(2, 2.0, lent=cpu_share.chat_share(2)) == 1
    assert cpu_share.free_threads(8, 8.0, lent=cpu_share.chat_share(8)) == 4
    # a run still on its lent threads from the last answer looks like a free core: it isn't one
    assert cpu_share.free_threads(2, 1.0, lent=1) == 1
    assert cpu_share.free_threads(8, 6.0, lent=4) == 4
    # nothing measurable: half the cores, as llama-cpp-python's own default, plus what is lent
    assert cpu_share.free_threads(8, None) == 4
    assert cpu_share.free_threads(1, None) == 1
    assert [cpu_share.training_share(c) for c in (1, 2, 3, 8)] == [1, 1, 2, 4]


def test_the_meter_counts_other_processes_and_not_our_own(monkeypatch):
    clock = {"wall": 100.0, "own": 5.0, "busy": 1000.0, "total": 4000.0}
    monkeypatch.setattr(cpu_share.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(cpu_share, "_own_cpu_s", lambda: clock["own"])
    monkeypatch.setattr(cpu_share, "_machine_ticks", lambda: (clock["busy"], clock["total"]))
    monkeypatch.setattr(cpu_share.os, "cpu_count", lambda: 2)
    meter = cpu_share.CpuMeter(cores=2)
    # one second: the machine had 2 CPU-seconds, 1.5 of them busy, 0.5 of those ours
    clock.update(wall=101.0, own=5.5, busy=1001.5, total=4002.0)
    assert meter.busy_elsewhere() == pytest.approx(1.0)
    meter.mark()
    clock.update(wall=101.1)  # too short a window to say anything
    assert meter.busy_elsewhere() is None
    chooser = cpu_share.ThreadChooser(cores=2)
    chooser.meter = meter
    chooser.threads = 2
    assert chooser.choose() == 2  # kept: nothing new was measured
    clock.update(wall=102.0, busy=1003.3, total=4004.0)  # 1.8 of 2 CPUs busy, none of it ours
    assert chooser.choose() == 1
    assert chooser.choose(lent=1) == 1  # the window is the same; what is lent comes on top of it


def test_the_meter_sees_a_process_that_keeps_a_core_busy():
    if cpu_share._machine_ticks() is None:
        pytest.skip("no /proc/stat here: the load-average fallback is used")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # the spinner is up (its start-up counts as busy too)
        meter = cpu_share.CpuMeter()
        time.sleep(0.6)
        busy = meter.busy_elsewhere()
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.7


def test_the_fixed_thread_count_wins_when_set(monkeypatch):
    monkeypatch.setenv(cpu_share.CHAT_THREADS_ENV, "3")
    assert cpu_share.ThreadChooser(cores=2).choose(lent=1) == 3
    for bad in ("0", "many", ""):
        monkeypatch.setenv(cpu_share.CHAT_THREADS_ENV, bad)
        assert cpu_share.fixed_threads() is None


CHILD_LENDS = """
    import os, signal, sys, time
    from tui_align import cpu_share
    cpu_share.follow_free_cores()
    import torch
    torch.set_num_threads(4)
    print(torch.get_num_threads(), flush=True)
    for line in sys.stdin:  # one signal per line the test writes; the thread count it led to comes back
        os.kill(os.getpid(), signal.SIGUSR1 if line.strip() == "lend" else signal.SIGUSR2)
        time.sleep(0.01)  # Python runs the handler at the next bytecode
        print(torch.get_num_threads(), flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_a_training_run_lends_half_its_threads_on_a_signal_and_takes_them_back(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD_LENDS)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, cpu_share.LEND_ENV: "1"})
    try:
        counts = [int(child.stdout.readline())]
        for what in ("lend", "back", "lend", "back"):
            child.stdin.write(what + "\n")
            child.stdin.flush()
            counts.append(int(child.stdout.readline()))
    finally:
        child.kill()
        child.wait()
    assert counts == [4, 2, 4, 2, 4]


def test_a_run_started_by_hand_keeps_the_signals_default():
    source = ("from tui_align import cpu_share; import signal; cpu_share.follow_free_cores(); "
              "print(getattr(signal, 'SIGUSR1', None) is None or signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)")
    env = {k: v for k, v in os.environ.items() if k != cpu_share.LEND_ENV}
    assert subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env).stdout.strip() == "True"


class FakeTorch:
    class cuda:
        @staticmethod
        def is_initialized():
            return False

    def __init__(self, threads: int):
        self.threads = threads

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, threads):
        self.threads = threads


def test_a_cpu_run_follows_the_free_cores_step_by_step_and_lends_on_request(monkeypatch):
    busy = iter([1.0, 0.1, 3.9, 0.0])
    torch = FakeTorch(4)
    threads = cpu_share.TrainingThreads(torch)
    monkeypatch.setattr(threads.meter, "busy_elsewhere", lambda: next(busy))
    assert threads.after_step() == 3  # another process kept a core busy over the step
    assert threads.after_step() == 4
    threads.lend(True)
    assert torch.threads == 2  # the app's chat answers: half the threads are lent
    assert threads.after_step() == 2  # and stay lent whatever the step measured (the chat's own load)
    threads.lend(False)
    assert torch.threads == 1  # back to what the machine leaves: 3.9 of 4 cores were busy
    assert threads.after_step() == 4


def test_the_train_command_reports_the_threads_each_step_uses_and_that_it_lends(tiny_model_dir, tmp_path):
    from tui_align.training import synthetic
    from tui_align import formats

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(formats.pair_to_record(p, "trl")) + "\n" for p in synthetic.trait_pairs(8, "prefix")))
    done = subprocess.run([sys.executable, "-m", "tui_align.train_command", "--jsonl", "--data", str(data), "--model",
                           str(tiny_model_dir), "--max-steps", "2", "--check-answers", "0", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, cpu_share.LEND_ENV: "1"})
    steps = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "step"]
    assert done.returncode == 0 and len(steps) == 2, done.stdout[-2000:]
    assert all(1 <= e["threads"] <= cpu_share.usable_cores() for e in steps)
    [start] = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "start"]
    assert start["lends_cores"] is True  # as the app starts it: its handlers are in place


def test_a_run_lends_nothing_before_its_first_line_or_after_its_end(tmp_path):
    run = TrainProcess(argv=[sys.executable, "-c", "import time; time.sleep(30)"], log_path=tmp_path / "log")
    run.start()
    try:
        assert run.lend_cores() == 0  # it hasn't said its handlers are in place: a signal would end it
        run.record_line(json.dumps({"event": "start", "lends_cores": True}))
        run.process.kill()
        run.process.wait()
        assert run.lend_cores() == 0
    finally:
        if run.process.poll() is None:
            run.process.kill()


@pytest.fixture
def store(store):
    store.add_pairs(synthetic.trait_pairs(6, "prefix"))  # something to train on
    return store


# A child that records the signals it gets and steps when the gate lets it. Each record is one os.write: the two
# signals can come microseconds apart, and a buffered file's write, interrupted by the second handler writing to
# it (a buffered write runs pending handlers while it holds its lock), raises "reentrant call" and loses that
# record: the likely reason two full runs waited 20 s for a "back" the child never wrote, where alone it passed.
CHILD_RECORDS_SIGNALS = """
    import json, os, signal, sys
    record = os.open(sys.argv[0] + ".signals", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    signal.signal(signal.SIGUSR1, lambda *_: os.write(record, b"lend\\n"))
    signal.signal(signal.SIGUSR2, lambda *_: os.write(record, b"back\\n"))
    def say(**e): print(json.dumps(e), flush=True)
    say(event="start", config={"method": "dpo"}, total_steps=3, run_dir="RUN", lends_cores=True)
    with open(sys.argv[0] + ".gate", "rb", buffering=0) as gate:
        while gate.read(1):
            pass
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0)
"""


class LentCoresBackend(ScriptedBackend):
    """Records what the app lent it for each answer."""

    def __init__(self, *replies: str):
        super().__init__(*replies)
        self.lent_seen: list[int] = []

    def _pieces(self, messages, settings, should_stop):
        self.lent_seen.append(self.lent_cores)
        return (yield from super()._pieces(messages, settings, should_stop))


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
async def test_the_app_borrows_the_runs_cores_for_an_answer_and_gives_them_back(make_app, monkeypatch, tmp_path):
    script = fake_child(monkeypatch, tmp_path, CHILD_RECORDS_SIGNALS)
    gate = ChildGate(Path(f"{script}.gate"))
    signals = Path(f"{script}.signals")
    backend = LentCoresBackend("Before the run.", "During the run.")
    app = make_app(backend)
    try:
        async with app.run_test(size=(160, 30)) as pilot:
            await settle(pilot)
            app.screen.query_one("#message", Input).value = "Hello"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen.session.turns[-1]["content"] == "Before the run.", "the answer")
            await pilot.press("f4", "ctrl+g", "f2")
            train = app.get_screen("train")
            await wait_until(pilot, lambda: train.train_run is not None and train.train_run.lends_cores,
                             "the run's start event")
            run = train.train_run
            app.screen.query_one("#message", Input).value = "And now?"
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.screen.session.turns[-1]["content"] == "During the run.", "the answer")
            await wait_until(pilot, lambda: signals.is_file() and signals.read_text() == "lend\nback\n",
                             "the run got its cores back")
            assert backend.lent_seen == [0, cpu_share.chat_share(cpu_share.usable_cores())]
            assert run.lent == 0
            gate.close()
            await wait_exited(pilot, run)
    finally:
        try:
            gate.close()
        except OSError:
            pass
