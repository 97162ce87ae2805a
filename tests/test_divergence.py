"""A run that diverges says so (issue 16, part 5): `--lr 1e9` used to finish as "completed" with LoRA
weights near 1e9. Now the run stops with error kind "diverged", names the step and the learning rate,
and keeps the adapter of the last sound step as its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tui_align.training import divergence
from tui_align.training.divergence import Diverged, Divergence

from test_training import pairs_file, run_cli  # noqa: F401  (pairs_file: a fixture)


def test_a_huge_learning_rate_stops_as_diverged_and_keeps_the_last_sound_adapter(capsys, pairs_file, tiny_model_dir):
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 12,
                           "--lr", "1e9", "--check-answers", 0)
    assert code == 1
    error = events[-1]
    assert error["event"] == "error" and error["kind"] == "diverged", error
    assert "Lower --lr (it was 1e+09)" in error["message"] and "Training diverged at step" in error["message"]
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) < 12  # it did not run to the end
    run_dir = Path(next(e for e in events if e["event"] == "start")["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"]["kind"] == "diverged"
    assert not (run_dir / "adapter_model.safetensors").exists()
    kept = run_dir / "checkpoint" / "adapter_model.safetensors"
    if "no adapter is kept" not in error["message"]:
        weights = load_file(str(kept))
        largest = max(t.abs().max().item() for t in weights.values())
        assert math.isfinite(largest) and largest < 1e3, largest  # the sound adapter, not the exploded one


def test_the_default_learning_rate_does_not_diverge(capsys, pairs_file, tiny_model_dir):
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 6,
                           "--check-answers", 0)
    assert code == 0, events[-1]
    assert all(math.isfinite(e["grad_norm"]) for e in events if e["event"] == "step")


class Weights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def test_divergence_puts_back_the_weights_the_last_sound_step_started_from():
    model = Weights()
    watch = Divergence(model, 1e-3)
    for step, loss in enumerate([0.7, 0.69, 0.68, 0.6], start=1):
        watch.before_step(step)
        with torch.no_grad():
            model.w.fill_(step)  # the update of `step`
        watch.after_step(step, loss, 1.0)
    watch.before_step(5)
    with torch.no_grad():
        model.w.fill_(5)
    # step 5's loss is measured on the weights step 4 left: those are bad; step 3's are the last sound ones
    with pytest.raises(Diverged) as raised:
        watch.after_step(5, 1e6, 1.0)
    assert raised.value.kept_step == 3 and model.w.tolist() == [3.0, 3.0, 3.0]
    assert "step 5" in str(raised.value) and "1e+06" in str(raised.value)


@pytest.mark.parametrize("loss,blows", [(5.0, False), (10.6, False), (10.8, True), (float("inf"), True)])
def test_what_counts_as_an_exploded_loss(loss, blows):
    assert divergence.exploded(loss, 0.7) is blows or not math.isfinite(loss)


def test_a_non_finite_gradient_norm_is_divergence():
    model = Weights()
    watch = Divergence(model, 1.0)
    watch.before_step(1)
    with pytest.raises(Diverged, match="the gradient norm is nan"):
        watch.after_step(1, 0.5, float("nan"))


def test_weights_past_the_limit_condemn_only_the_last_update():
    model = Weights()
    watch = Divergence(model, 1e9)
    watch.before_step(1)
    with torch.no_grad():
        model.w.fill_(0.5)
    watch.after_step(1, 0.7, 1.0)
    watch.before_step(2)
    with torch.no_grad():
        model.w.fill_(1e9)
    with pytest.raises(Diverged, match="weights reached 1e\\+09") as raised:
        watch.after_step(2, 0.7, 0.0)  # the loss looks fine: it was measured before the update
    assert raised.value.kept_step == 1 and model.w.tolist() == [0.5, 0.5, 0.5]
