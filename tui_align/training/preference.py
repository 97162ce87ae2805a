"""A preference method's loop: its loss over chosen and rejected log-probs, trained with `loop.run_steps`.

A method gives a `PairLoss`: pure functions of log-probs (`terms`), and what its step and eval events
report. This module does the forward, the reference log-probs when the method needs them, and the eval.
The reference is the same base with the adapter switched off; its log-probs never change during a
run, so each pair is scored once, the first time a batch needs it (`Reference`), and looked up after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import defaults, forward, loop
from .config import TrainConfig
from .data import EncodedPair
from .divergence import Divergence
from .job import Job
from .phases import Phase


@dataclass
class PairLogps:
    """Summed answer log-probs of a batch, each (B,), and the answers' token counts, each (B,)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass(frozen=True)
class PairLoss:
    """A preference loss and what it reports.

    terms(policy, reference, settings) -> (per-pair losses, other per-pair tensors...); reference is
        None for a method without one. Pure: tensors in, tensors out.
    step_fields(values, settings) -> the step event's fields after "loss" (values: the other tensors, detached).
    summary(losses, values, settings) -> the held-out eval's fields: accuracy, margin, loss, and any more.
    """

    terms: Callable[[PairLogps, PairLogps | None, object], tuple]
    step_fields: Callable[[tuple, object], dict]
    summary: Callable[[torch.Tensor, tuple, object], dict]


def policy_logps(model, batch: list[EncodedPair], pad_id: int) -> tuple[PairLogps, int]:
    """The batch's log-probs through the active adapter, and the tokens run."""
    logps, counts, tokens = forward.batch_logps(model, batch, pad_id)
    n = len(batch)
    return PairLogps(logps[:n], logps[n:], counts[:n], counts[n:]), tokens


class Reference:
    """The base model's summed answer log-probs (adapter off) of each pair, scored when a batch first needs it.

    Scored as the run goes rather than all before the first step: the same forward passes (the loop's
    batches are already grouped by length, so padding is no worse), but only for the pairs the run
    uses (with --max-steps, only its batches; on a resume, only the batches still ahead), and the first
    step comes after one batch instead of after the whole set (minutes on a CPU for a few thousand pairs).
    """

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.logps: dict[int, tuple[float, float]] = {}  # id(pair) -> (chosen, rejected)

    @torch.no_grad()
    def score(self, pairs: list[EncodedPair]) -> None:
        """Score those of `pairs` not scored yet, in one forward pass."""
        missing = [p for p in pairs if id(p) not in self.logps]
        if not missing:
            return
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference, whatever mode the step is in
        try:
            with self.model.disable_adapter():
                logps, _, _ = forward.batch_logps(self.model, missing, self.pad_id)
        finally:
            self.model.train(was_training)
        n = len(missing)
        for pair, chosen, rejected in zip(missing, logps[:n].tolist(), logps[n:].tolist()):
            self.logps[id(pair)] = (chosen, rejected)

    def of(self, batch: list[EncodedPair], policy: PairLogps) -> PairLogps:
        """The reference log-probs of `batch`, on the policy's device (same answers, same token counts)."""
        self.score(batch)
        chosen, rejected = zip(*(self.logps[id(p)] for p in batch))
        device = policy.chosen.device
        return PairLogps(torch.tensor(chosen, device=device), torch.tensor(rejected, device=device),
                         policy.chosen_tokens, policy.rejected_tokens)


def reference_logps(model, pairs: list[EncodedPair], pad_id: int, batch_size: int) -> Reference:
    """A `Reference` with all of `pairs` scored now, in batches of similar length (tests, benchmarks)."""
    reference = Reference(model, pad_id)
    ordered = sorted(pairs, key=lambda p: p.length)
    for start in range(0, len(ordered), batch_size):
        reference.score(ordered[start : start + batch_size])
    return reference


def scheduled_pairs(train: list[EncodedPair], config: TrainConfig, start_step: int) -> int:
    """How many distinct training pairs the steps after `start_step` use."""
    return len({id(p) for _, _, batch in loop.schedule(train, config, start_step) for p in batch})


def pair_terms(loss: PairLoss, settings, model, batch: list[EncodedPair], pad_id: int,
               reference: Reference | None) -> tuple:
    """(losses, other per-pair tensors..., tokens) for one batch through the current adapter."""
    policy, tokens = policy_logps(model, batch, pad_id)
    reference = reference.of(batch, policy) if reference is not None else None
    return (*loss.terms(policy, reference, settings), tokens)


@torch.no_grad()
def evaluate(loss: PairLoss, settings, model, pairs: list[EncodedPair], pad_id: int, cache: Reference | None,
             batch_size: int, emit=None) -> dict:
    """The held-out eval: the loss's terms over `pairs` in order, summarised by the loss. With `emit`, it
    reports its progress (the first eval also scores the held-out pairs' reference: minutes on a CPU)."""
    model.eval()
    columns = []
    with Phase(emit or (lambda *a, **k: None), "eval", f"scoring the {len(pairs)} held-out pairs", total=len(pairs)) as phase:
        for start in range(0, len(pairs), batch_size):
            columns.append(pair_terms(loss, settings, model, pairs[start : start + batch_size], pad_id, cache)[:-1])
            phase.advance(len(pairs[start : start + batch_size]))
    losses, *values = (torch.cat(column) for column in zip(*columns))
    return loss.summary(losses, tuple(values), settings)


def train(loss: PairLoss, needs_reference: bool, settings, job: Job) -> dict:
    """Train the active LoRA adapter with `loss`; returns final metrics (held-out when there are any).

    A step event per optimizer step, an eval event at the end of every epoch. When should_stop() turns
    true it saves a checkpoint and returns with metrics["stopped"] = True.
    """
    model, config, pad_id = job.model, job.config, job.pad_id
    cache = Reference(model, pad_id) if needs_reference else None
    if cache is not None:
        announce_reference(job)
    optimizer = loop.make_optimizer(model, config, job.optimizer_state)
    total = loop.total_steps(len(job.train), config)
    per_epoch = loop.steps_per_epoch(len(job.train), config.batch_size)
    take_step = loop.accumulating(model, optimizer, config,
                                  lambda part: pair_terms(loss, settings, model, part, pad_id, cache),
                                  lambda values: loss.step_fields(values, settings))
    take_step = loop.scheduled(take_step, optimizer, config, total)
    outcome = loop.run_steps(
        loop.schedule(job.train, config, job.start_step), take_step, config,
        total=total, emit=job.emit, should_stop=job.should_stop, progress=loop.Progress(job.start_step, total),
        evaluate=(lambda: evaluate(loss, settings, model, job.held_out, pad_id, cache, config.batch_size, job.emit))
        if job.held_out else None,
        eval_due=lambda step: step % per_epoch == 0 or step == total,
        save_checkpoint=job.save_checkpoint, optimizer=optimizer,
        check=job.answers.broke if job.answers is not None and job.answers.enabled else None,
        divergence=Divergence(model, defaults.lr(config), held_out=len(job.held_out)),
    )
    model.eval()
    metrics = run_metrics(outcome)
    if outcome.broke:
        metrics.update(early_stop(job, outcome.step))
    return metrics


def announce_reference(job: Job) -> None:
    """Say how many pairs the reference log-probs will be computed for, and when."""
    used = scheduled_pairs(job.train, job.config, job.start_step)
    scored = used + len(job.held_out)
    everything = len(job.train) + len(job.held_out)
    held = f" and the {len(job.held_out)} held out" if job.held_out else ""
    job.emit("reference", pairs=scored, of=everything,
             message=(f"{scored} of {everything} pairs get reference log-probs (the {used} the steps use{held}), "
                      "each in the step that first uses it (one more forward pass there, without gradients)"))


def early_stop(job: Job, step: int) -> dict:
    """The answers broke down at `step`: put back the adapter of the last check that passed and say so."""
    kept = job.answers.roll_back()
    kept_step = kept["step"] if kept is not None else step
    reason = job.answers.last["verdict"] if kept is None else "answers broke down"
    job.emit("early_stop", step=step, kept_step=kept_step,
             message=(f"stopped at step {step}: the held-out answers broke down; "
                      + (f"kept the adapter of step {kept_step}, the last that passed the answer check"
                         if kept is not None else "no earlier check passed, so this adapter is kept as it is")))
    return {"early_stopped_at": step, "steps": kept_step, "early_stop_reason": reason}


def run_metrics(outcome: loop.Outcome) -> dict:
    """What run.json and the done event keep of a preference run."""
    metrics: dict = {"stopped": outcome.stopped}
    if outcome.step is not None:
        metrics.update(train_loss=outcome.fields["loss"], steps=outcome.step)
    if outcome.evaluation is not None:
        result = outcome.evaluation
        metrics.update(eval_accuracy=result["accuracy"], eval_margin=result["margin"], eval_loss=result["loss"])
    return metrics


def total_steps(train: list[EncodedPair], config: TrainConfig) -> int:
    """Optimizer steps of a preference run."""
    return loop.total_steps(len(train), config)
