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

A run can also go wrong with every number finite and modest: the held-out preference accuracy, having
clearly learned the picks, falls clearly below chance (the adapter now prefers the rejected answers, or
scores both answers alike: a tie counts as wrong). `accuracy_collapsed` says when, and then the adapter
of the best eval is put back. A few held-out pairs are mostly noise (36 pairs hold out about 4), so the
rule asks both ends to be beyond chance on a binomial test at COLLAPSE_SIGNIFICANCE: the best eval at
least COLLAPSE_BEST and improbable for a coin, the latest below a half and as improbable. On fewer than
7 held-out pairs no score is that improbable, so the rule never fires there; a run whose adapter still
scores at a coin's level fires at one eval in a hundred at most, a run that learned almost never.
"""

from __future__ import annotations

import math
import statistics

from .run_folder import RunError

BASELINE_STEPS = 3  # the typical loss is the median of this many first steps
EXPLODED_TIMES = 10.0
EXPLODED_BY = 10.0
WEIGHT_LIMIT = 1e3
COLLAPSE_BEST = 0.75  # the best held-out accuracy before a fall counts as a collapse
COLLAPSE_SIGNIFICANCE = 0.01  # how improbable, for a coin on those pairs, each end must be


class Diverged(RunError):
    def __init__(self, message: str, kept_step: int | None):
        super().__init__(message, kind="diverged")
        self.kept_step = kept_step


def exploded(loss: float, baseline: float) -> bool:
    """True when `loss` is past both EXPLODED_TIMES x and EXPLODED_BY over the typical |loss|."""
    typical = abs(baseline)
    return abs(loss) > max(typical * EXPLODED_TIMES, typical + EXPLODED_BY)


def _coin_tail(right: int, pairs: int) -> float:
    """P(a fair coin gets at most `right` of `pairs` right); by symmetry also P(at least pairs - right)."""
    return sum(math.comb(pairs, k) for k in range(right + 1)) / 2 ** pairs


def accuracy_collapsed(best: float, latest: float, pairs: int) -> bool:
    """True when the held-out accuracy fell from a clearly learned `best` to clearly below chance, on
    `pairs` held-out pairs (the rule in the module's docstring)."""
    if pairs < 1 or best < COLLAPSE_BEST or latest >= 0.5:
        return False
    best_right, latest_right = round(best * pairs), round(latest * pairs)
    return (_coin_tail(pairs - best_right, pairs) < COLLAPSE_SIGNIFICANCE
            and _coin_tail(latest_right, pairs) < COLLAPSE_SIGNIFICANCE)


class Divergence:
    """Watches a loop's steps; `before_step` keeps the weights, `after_step` raises Diverged; with
    `held_out` pairs, `after_eval` raises it when their accuracy collapses."""

    def __init__(self, model, learning_rate: float, held_out: int = 0):
        self.model, self.learning_rate, self.held_out = model, learning_rate, held_out
        self._best: tuple[int, float, dict] | None = None  # (step, accuracy, weights) of the best eval
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

    def after_eval(self, step: int, evaluation: dict) -> None:
        """The held-out eval after `step`: keeps the adapter of the best one, raises Diverged on a collapse."""
        accuracy = evaluation.get("accuracy")
        if not self.held_out or accuracy is None:
            return
        if self._best is None or accuracy > self._best[1]:
            self._best = (step, accuracy, self._weights())
            return
        best_step, best, weights = self._best
        if accuracy_collapsed(best, accuracy, self.held_out):
            self.restore(weights)
            self._raise(step, f"the held-out accuracy fell to {accuracy:.0%} of {self.held_out} pairs, from "
                              f"{best:.0%} at step {best_step}", best_step, "the best held-out one")

    def fail(self, step: int, reason: str, update_only: bool = False) -> None:
        """Step `step` diverged for `reason`: put back the last sound weights and raise Diverged.
        update_only: only step's own update was bad (its loss was measured on sound weights)."""
        kept = self._current if update_only else self._sound
        if kept is not None:
            self.restore(kept[1])
        self._raise(step, reason, kept[0] if kept is not None else None, "the last sound one")

    def _raise(self, step: int, reason: str, kept_step: int | None, which: str) -> None:
        kept_step = kept_step if kept_step is not None and kept_step > 0 else None
        where = (f"the adapter of step {kept_step} ({which}) is kept" if kept_step is not None
                 else "no step before it was sound, so no adapter is kept")
        raise Diverged(f"Training diverged at step {step}: {reason}. Lower --lr (it was {self.learning_rate:g}); "
                       f"{where}.", kept_step)

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
