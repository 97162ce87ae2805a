"""A run that diverges stops and says so, keeping the last adapter that was still sound.

A far too high learning rate doesn't always end in NaN: with `--lr 1e9` the LoRA weights reach 1e9 and
the losses stay finite, so such a run used to finish as "completed" with a model that answers nothing.
On the tiny test model it went quiet instead: after one step every gradient was exactly 0 (the
activations saturated) and the loss stood still. So every step is checked for a non-finite loss or
gradient norm, a loss that has exploded against the first steps' (EXPLODED_TIMES their typical loss, and
at least EXPLODED_BY more), and adapter weights past WEIGHT_LIMIT: Adam moves a weight by about the
learning rate per step, so a LoRA weight of 1000 takes a rate far past any that trains (600 steps at
1e-2 move a weight by at most 6).

The loss of step k is measured on the weights step k-1 left, so when it explodes those weights are
already bad, and the last sound ones are those step k-1 started from; a weight past the limit condemns
only step k's update. `Divergence` keeps both copies (the trainable tensors only: a LoRA is a few MB)
and the run saves the sound one as its checkpoint.
"""

from __future__ import annotations

import math
import statistics

from .run_folder import RunError

BASELINE_STEPS = 3  # the typical loss is the median of this many first steps
EXPLODED_TIMES = 10.0
EXPLODED_BY = 10.0
WEIGHT_LIMIT = 1e3


class Diverged(RunError):
    def __init__(self, message: str, kept_step: int | None):
        super().__init__(message, kind="diverged")
        self.kept_step = kept_step


def exploded(loss: float, baseline: float) -> bool:
    """True when `loss` is past both EXPLODED_TIMES x and EXPLODED_BY over the typical |loss|."""
    typical = abs(baseline)
    return abs(loss) > max(typical * EXPLODED_TIMES, typical + EXPLODED_BY)


class Divergence:
    """Watches a loop's steps; `before_step` keeps the weights, `after_step` raises Diverged."""

    def __init__(self, model, learning_rate: float):
        self.model, self.learning_rate = model, learning_rate
        self.first_losses: list[float] = []
        self._sound: tuple[int, dict] | None = None  # (step, weights) the last step that checked out started from
        self._current: tuple[int, dict] | None = None

    def before_step(self, step: int) -> None:
        self._sound, self._current = self._current, (step - 1, self._weights())

    def after_step(self, step: int, loss: float, grad_norm: float | None) -> None:
        reason = None
        if not math.isfinite(loss):
            reason = f"the loss is {loss}"
        elif grad_norm is not None and not math.isfinite(grad_norm):
            reason = f"the gradient norm is {grad_norm}"
        elif len(self.first_losses) >= BASELINE_STEPS:
            baseline = statistics.median(self.first_losses)
            if exploded(loss, baseline):
                reason = f"the loss is {loss:.3g}, against {baseline:.3g} in the first steps"
        if reason is not None:
            self.fail(step, reason)
        largest = self._largest_weight()
        if not largest <= WEIGHT_LIMIT:  # also NaN
            self.fail(step, f"the adapter's weights reached {largest:.3g}", update_only=True)
        if len(self.first_losses) < BASELINE_STEPS:
            self.first_losses.append(loss)

    def fail(self, step: int, reason: str, update_only: bool = False) -> None:
        """Step `step` diverged for `reason`: put back the last sound weights and raise Diverged.
        update_only: only step's own update was bad (its loss was measured on sound weights)."""
        kept = self._current if update_only else self._sound
        if kept is not None:
            self.restore(kept[1])
        where = (f"the adapter of step {kept[0]} (the last sound one) is kept" if kept is not None and kept[0] > 0
                 else "no step before it was sound, so no adapter is kept")
        raise Diverged(f"Training diverged at step {step}: {reason}. Lower --lr (it was {self.learning_rate:g}); "
                       f"{where}.", kept[0] if kept is not None and kept[0] > 0 else None)

    def _largest_weight(self) -> float:
        values = [p.detach().abs().max() for p in self.model.parameters() if p.requires_grad and p.numel()]
        return max(v.item() for v in values) if values else 0.0

    def _weights(self) -> dict:
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def restore(self, weights: dict) -> None:
        import torch

        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in weights:
                    p.copy_(weights[name])
