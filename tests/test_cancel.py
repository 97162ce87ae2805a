"""A run costs what it trains, and Cancel works from the first second (issue 19).

The reference log-probs are scored for exactly the pairs the steps use; SIGTERM ends a real child within
a second whether it is loading, tokenising, or inside a step's forward, reference or backward pass; a
cancel before the first step leaves no run folder; every phase before the first step reports progress.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tui_align.training import cancel, loop, preference, runner, synthetic
from tui_align.training.config import TrainConfig
from tui_align.training.events import CollectEvents, HumanEvents

from test_training import write_pairs_file

CANCEL_WITHIN_S = 1.0


def options(tmp_path: Path, model_dir: Path, n_pairs: int, **settings) -> runner.RunOptions:
    config = TrainConfig(device="cpu", precision="float32", check_answers=0, **settings)
    return runner.RunOptions(config=config, models_dir=tmp_path / "models", adapters_dir=tmp_path / "adapters",
                             pairs=synthetic.trait_pairs(n_pairs, "prefix"), model=str(model_dir))


def test_max_steps_scores_only_the_pairs_of_its_batches(tmp_path, tiny_model_dir, monkeypatch):
    scored: list[int] = []
    real_score = preference.Reference.score

    def counting(self, pairs):
        scored.extend(id(p) for p in pairs if id(p) not in self.logps)
        return real_score(self, pairs)

    monkeypatch.setattr(preference.Reference, "score", counting)
    used: dict = {}
    real_schedule = loop.schedule

    def recording(train, config, start_step=0):
        for step, epoch, batch in real_schedule(train, config, start_step):
            used.setdefault("train", set()).update(id(p) for p in batch)
            yield step, epoch, batch

    monkeypatch.setattr(loop, "schedule", recording)
    events = CollectEvents()
    run = options(tmp_path, tiny_model_dir, 80, method="dpo", batch_size=4, max_steps=3)
    assert runner.run(run, events) == 0, events.events[-1]
    start = events.of("start")[0]
    held_out = start["eval_pairs"]
    assert start["train_pairs"] == 72 and held_out == 8
    assert len(used["train"]) == 12  # three batches of four
    assert len(scored) == len(set(scored)) == 12 + held_out  # each pair once: the batches' and the held-out
    said = events.of("reference")[0]
    assert (said["pairs"], said["of"]) == (12 + held_out, 80) and "the 12 the steps use" in said["message"]


def test_the_reference_scored_as_batches_come_equals_the_pass_ahead(smol_tokenizer, tiny_llama):
    """Scoring a pair inside a training batch or in a length-sorted pass ahead gives the same log-probs."""
    from tui_align.training import data, lora

    model = lora.attach_lora(tiny_llama, TrainConfig(), None)
    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(12, "signoff"), 128)
    ahead = preference.reference_logps(model, encoded, smol_tokenizer.pad_token_id, 5)
    lazy = preference.Reference(model, smol_tokenizer.pad_token_id)
    model.train()
    for start in range(0, 12, 4):
        lazy.score(encoded[start : start + 4])
    assert model.training  # scoring puts back the mode the step runs in
    for pair in encoded:
        assert lazy.logps[id(pair)] == pytest.approx(ahead.logps[id(pair)], abs=1e-4)


class DecoderLayer(torch.nn.Module):  # the name is what check_during_backward looks for
    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def test_a_cancel_lands_inside_a_backward_pass_between_layers():
    """A stop requested while the gradient of the top layer is computed abandons the backward before
    the bottom layer's gradient: the pass doesn't run to its end first."""
    layers = torch.nn.Sequential(*(DecoderLayer(8) for _ in range(6)))
    cancel.check_during_backward(layers)
    stop = {"now": False}
    out = layers(torch.randn(4, 8, requires_grad=True))
    out.register_hook(lambda grad: stop.update(now=True))  # the first gradient of the backward pass
    with cancel.watching(lambda: stop["now"]), pytest.raises(cancel.Cancelled):
        out.sum().backward()
    # the top layer's gradient was under way when the stop came; the next layer down never got one
    assert layers[-1].linear.weight.grad is not None and layers[-2].linear.weight.grad is None
    assert layers[0].linear.weight.grad is None


def test_an_update_in_progress_is_never_cancelled():
    with cancel.watching(lambda: True):
        cancel.protect_rest_of_step()
        try:
            cancel.check()  # would raise outside an update
        finally:
            cancel.step_committed()
    with cancel.watching(lambda: True), pytest.raises(cancel.Cancelled):
        cancel.check()


def test_an_update_that_failed_leaves_no_protection_for_the_next_run():
    with cancel.watching(lambda: False):
        cancel.protect_rest_of_step()  # then the update raised: the loop never marked the step done
    with cancel.watching(lambda: True), pytest.raises(cancel.Cancelled):
        cancel.check()


def test_a_cancel_before_the_first_step_leaves_no_run_folder(tmp_path, tiny_model_dir):
    events = CollectEvents()
    asked = {"stop": False}

    def emit(kind, **fields):
        events(kind, **fields)
        if kind == "start":
            asked["stop"] = True  # the run folder exists from here

    code = runner.run(options(tmp_path, tiny_model_dir, 12, method="dpo", batch_size=4, max_steps=2),
                      emit, lambda: asked["stop"])
    assert code == 130 and not events.of("step")
    done = events.events[-1]
    assert done["event"] == "done" and done["cancelled"] and done["run_dir"] is None
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_every_phase_before_the_first_step_reports_progress(tmp_path, tiny_model_dir):
    events = CollectEvents()
    run = options(tmp_path, tiny_model_dir, 12, method="dpo", batch_size=4, max_steps=1)
    run.config.check_answers = 2
    assert runner.run(run, events) == 0, events.events[-1]
    kinds = [e["event"] for e in events.events]
    first_step = kinds.index("step")
    tasks = [e["task"] for e in events.events[:first_step] if e["event"] == "progress"]
    assert [t for i, t in enumerate(tasks) if t not in tasks[:i]] == ["loading", "tokenising", "baseline"]
    finished = [e for e in events.of("progress") if e["finished"]]
    # then, after the step: the held-out eval and the check of the adapter's answers
    assert [e["task"] for e in finished] == ["loading", "tokenising", "baseline", "eval", "answers"]
    tokenised = next(e for e in finished if e["task"] == "tokenising")
    assert tokenised["done"] == tokenised["total"] == 12


def test_a_slow_phase_says_it_is_alive_every_second(monkeypatch):
    from tui_align.training import phases

    monkeypatch.setattr(phases, "HEARTBEAT_S", 0.05)
    events = CollectEvents()
    with phases.Phase(events, "loading", "loading a model"):
        deadline = time.monotonic() + 0.5
        while len(events.of("progress")) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # an opaque library call that reports nothing itself
    beats = events.of("progress")
    assert len(beats) >= 5 and beats[-1]["finished"] and all(b["total"] is None for b in beats)


def test_the_command_line_shows_a_phase_without_a_line_a_second():
    lines: list[str] = []

    class Lines:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    human = HumanEvents(Lines())
    for second in range(13):
        human("progress", task="loading", label="loading m", done=0, total=None, elapsed_s=float(second),
              eta_s=None, finished=False)
    human("progress", task="loading", label="loading m", done=0, total=None, elapsed_s=13.0, eta_s=None, finished=True)
    assert lines == ["loading m… (1 s)\n", "loading m… (11 s)\n", "loading m: done in 13.0 s\n"]


# --- a real child, cancelled with SIGTERM as the app does ------------------------------------------------


def start_child(tmp_path: Path, model_dir: Path, *flags) -> subprocess.Popen:
    data = tmp_path / "pairs.jsonl"
    write_pairs_file(data, 300)
    argv = [sys.executable, "-m", "tui_align.train_command", "--jsonl", "--home", str(tmp_path / "home"),
            "--data", str(data), "--model", str(model_dir), "--device", "cpu", "--precision", "float32",
            "--check-answers", "0", *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def cancel_when(child: subprocess.Popen, ready, delay_s: float = 0.0) -> tuple[float, list[dict]]:
    """Read events until `ready(event)`, wait `delay_s`, SIGTERM; returns (seconds to exit, all events)."""
    events = []
    for line in child.stdout:
        events.append(json.loads(line))
        if ready(events[-1]):
            break
    else:
        raise AssertionError(f"the child ended first: {events[-1:]} {child.stderr.read()[-2000:]}")
    time.sleep(delay_s)
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    rest, _ = child.communicate(timeout=60)
    took = time.monotonic() - sent
    events += [json.loads(line) for line in rest.splitlines()]
    return took, events


def test_sigterm_inside_the_first_step_ends_the_child_within_a_second(tmp_path, tiny_model_dir):
    """300 pairs in one batch: the first step (policy forward, reference forward, backward) takes seconds
    on the tiny model; SIGTERM half a second into it abandons it, and the folder goes (no step was done)."""
    child = start_child(tmp_path, tiny_model_dir, "--batch-size", "270", "--pass-tokens", "0", "--max-steps", "2")
    took, events = cancel_when(child, lambda e: e["event"] == "reference", delay_s=0.5)
    assert child.returncode == 130, events[-3:]
    assert took < CANCEL_WITHIN_S, f"{took:.2f} s from SIGTERM to exit"
    assert not any(e["event"] == "step" for e in events)
    assert events[-1]["event"] == "done" and events[-1]["cancelled"] and events[-1]["run_dir"] is None
    assert not any((tmp_path / "home" / "models" / "adapters").glob("*"))


def test_sigterm_while_loading_ends_the_child_within_a_second(tmp_path, tiny_model_dir):
    """The same long first step: a cancel that waited for a step to end would take seconds."""
    child = start_child(tmp_path, tiny_model_dir, "--batch-size", "270", "--pass-tokens", "0", "--max-steps", "2")
    took, events = cancel_when(child, lambda e: e["event"] == "progress" and e["task"] == "loading")
    assert child.returncode == 130 and took < CANCEL_WITHIN_S, (took, events[-3:])
    assert events[-1]["event"] == "done" and events[-1]["run_dir"] is None


def test_sigterm_in_the_reward_models_first_step_ends_a_ppo_child_within_a_second(tmp_path, tiny_model_dir):
    """PPO's first phase, the reward model, cancelled a tenth of a second in: its first step takes 0.28 s on
    an idle machine (the shared-prompt layout makes it far shorter than DPO's 9 s), so the signal lands
    in it or just before it, and no step may finish."""
    child = start_child(tmp_path, tiny_model_dir, "--method", "ppo", "--batch-size", "270", "--pass-tokens", "0",
                        "--max-steps", "2")
    took, events = cancel_when(child, lambda e: e["event"] == "phase" and e["name"] == "reward_model", delay_s=0.1)
    assert child.returncode == 130 and took < CANCEL_WITHIN_S, (took, events[-3:])
    assert not any(e["event"] == "step" for e in events) and events[-1]["run_dir"] is None


@pytest.mark.slow
def test_the_default_model_cancels_within_a_second_in_its_first_step(tmp_path):
    """The real default model (its GGUF converted in a fresh data folder first), 300 pairs, batch 8:
    SIGTERM two seconds into the first step, where the policy and reference passes run."""
    data = tmp_path / "pairs.jsonl"
    write_pairs_file(data, 300)
    argv = [sys.executable, "-m", "tui_align.train_command", "--jsonl", "--home", str(tmp_path / "home"),
            "--data", str(data), "--batch-size", "8", "--max-steps", "3", "--check-answers", "0"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took, events = cancel_when(child, lambda e: e["event"] == "reference", delay_s=2.0)
    assert child.returncode == 130 and took < CANCEL_WITHIN_S, (took, events[-3:])
    assert events[-1]["event"] == "done" and events[-1]["cancelled"]
