"""The one training loop every method runs, and the pieces around it: step schedules, the optimizer,
a step's forward and backward in passes, progress.

A method supplies what differs: its batches (`schedule` or `shuffled_schedule`), what one optimizer
step does (`accumulating` for a loss over pairs; PPO brings its own), what its held-out eval reports.
`run_steps` does the rest the same way for all: step events with tokens/s and ETA, evals when due,
the user's stop request, checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from .. import cpu_share
from . import cancel, defaults, memory_probe
from .config import TrainConfig
from .divergence import Diverged, Divergence
from .data import EncodedPair, length_grouped_batches
from .forward import pass_tokens

SaveCheckpoint = Callable[..., None]  # save_checkpoint(step, optimizer=None)
Steps = Iterable[tuple[int, float, list]]  # (step, epoch as a float, batch)
# take_step(step, batch) -> (the step event's fields, "loss" first; tokens run)
TakeStep = Callable[[int, list], tuple[dict, int]]


steps_per_epoch = defaults.steps_per_epoch  # the rule's and the loop's epoch are one


def total_steps(n_train: int, config: TrainConfig) -> int:
    """Optimizer steps of a run: --max-steps, else --epochs, else the step budget (defaults.py)."""
    return defaults.steps(config, n_train)


def schedule(train: list[EncodedPair], config: TrainConfig, start_step: int = 0) -> Iterator[tuple[int, float, list[EncodedPair]]]:
    """(step, epoch as a float, batch) for steps start_step+1 .. total_steps.

    Each epoch's batch order comes from its own seeded RNG, so a resumed run skips exactly the
    batches it already trained on and sees the same ones after.
    """
    per_epoch = steps_per_epoch(len(train), config.batch_size)
    last = total_steps(len(train), config)
    step = 0
    for epoch in range(math.ceil(last / per_epoch)):
        rng = random.Random(f"{config.seed}-{epoch}")
        for batch in length_grouped_batches(train, config.batch_size, rng):
            step += 1
            if step > last:
                return
            if step > start_step:
                yield step, step / per_epoch, batch


def shuffled_batches(items: list, size: int, generator: torch.Generator | None = None) -> list[list]:
    """Batches of `size`, in an order drawn from `generator` (kept in order without one)."""
    order = torch.randperm(len(items), generator=generator).tolist() if generator else range(len(items))
    ordered = [items[i] for i in order]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def shuffled_schedule(items: list, batch_size: int, steps: int, seed: int, *, first_step: int = 0,
                      start_step: int = 0) -> Iterator[tuple[int, float, list]]:
    """(step, epoch, batch) for `steps` batches, pass after pass in torch-shuffled order, numbered from
    first_step+1.

    The order of the reward model and the warm start (they predate `schedule`; keeping it keeps their
    numbers). Steps up to start_step are skipped, their shuffles still drawn, so a resume sees the same
    batches after.
    """
    generator = torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(len(items), batch_size)
    last, step = first_step + steps, first_step
    while items and step < last:
        for batch in shuffled_batches(items, batch_size, generator):
            if step == last:
                break
            step += 1
            if step > start_step:
                yield step, (step - first_step) / per_epoch, batch


def make_optimizer(model, config: TrainConfig, state: dict | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) weights; restores `state` when resuming."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=defaults.lr(config), weight_decay=0.0)
    if state is not None:
        optimizer.load_state_dict(state)
    return optimizer


def passes(batch: list[EncodedPair], max_tokens: int) -> list[list[EncodedPair]]:
    """`batch` cut, in order, into forward passes of at most `max_tokens` tokens (at least one pair each;
    0 = the whole batch in one pass)."""
    if max_tokens <= 0:
        return [batch]
    out, current, used = [], [], 0
    for pair in batch:
        cost = pass_tokens(pair)
        if current and used + cost > max_tokens:
            out.append(current)
            current, used = [], 0
        current.append(pair)
        used += cost
    return out + [current]


def accumulated_step(optimizer: torch.optim.Optimizer, batch: list[EncodedPair], config: TrainConfig, step: int,
                     terms: Callable[[list[EncodedPair]], tuple]) -> tuple[tuple[torch.Tensor, ...], int]:
    """One optimizer step over `batch`, its forward and backward run a pass at a time (`passes`).

    `terms(pairs)` returns (per-pair losses, other per-pair tensors..., tokens). Each pass backs up its
    share of the batch's mean loss right away, so only one pass's activations are alive: peak memory
    follows --pass-tokens, not the batch, for the same gradient. Returns the per-pair tensors of the
    whole batch, detached, the tokens run and the gradient norm before clipping (--max-grad-norm). A
    non-finite loss or gradient norm stops the run before any weight changes (FloatingPointError).
    """
    optimizer.zero_grad(set_to_none=True)
    outputs, tokens = [], 0
    for part in passes(batch, config.pass_tokens):
        losses, *values, n_tokens = terms(part)
        share = losses.sum() / len(batch)
        if not torch.isfinite(share):
            raise FloatingPointError(f"the loss is {share.item() * len(batch) / len(part)} at step {step}")
        share.backward()
        outputs.append([losses.detach(), *(v.detach() for v in values)])
        tokens += n_tokens
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = clip_gradients(params, config, step)
    cancel.protect_rest_of_step()
    optimizer.step()
    return tuple(torch.cat(column) for column in zip(*outputs)), tokens, norm


def scheduled(take_step: TakeStep, optimizer: torch.optim.Optimizer, config: TrainConfig, total: int,
              first_step: int = 0) -> TakeStep:
    """`take_step` with the optimizer's rate set for each step by config.lr_schedule: a pure function of the
    step, so a resumed run continues the same curve with nothing more saved. The schedule's `total` steps
    are the run's first_step+1 .. first_step+total (a phase numbered after the run's earlier ones)."""
    if config.lr_schedule in (None, "constant"):
        return take_step
    start = defaults.lr(config)  # not the optimizer's own: a resumed one's state holds the decayed rate
    # hold-decay: the full rate for the steps a small set needs to learn at all (the step floor), then
    # linear over the rest; linear: from the first step
    held = defaults.MIN_STEPS if config.lr_schedule == "hold-decay" else 0

    def step_at(step: int, batch):
        past = max(0, step - 1 - first_step - held)
        rate = start * (1 - past / max(1, total - held))  # the start, then down to start/(total-held) at the last
        for group in optimizer.param_groups:
            group["lr"] = rate
        fields, tokens = take_step(step, batch)
        return {**fields, "lr": rate}, tokens

    return step_at


def clip_gradients(params: list, config: TrainConfig, step: int) -> float:
    """Clip the gradients' total norm to --max-grad-norm (0: measure only); returns the norm before."""
    limit = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    if not math.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm} at step {step}")
    return norm


def accumulating(model, optimizer, config: TrainConfig, terms: Callable[[list], tuple],
                 report: Callable[[tuple], dict] = lambda values: {}) -> TakeStep:
    """A step that is one `accumulated_step` of `terms`; its event reports the mean loss, then
    `report(other per-pair tensors)`."""

    def take_step(step: int, batch: list) -> tuple[dict, int]:
        model.train()
        (losses, *values), tokens, norm = accumulated_step(optimizer, batch, config, step, terms)
        return {"loss": losses.mean().item(), **report(tuple(values)), "grad_norm": norm}, tokens

    return take_step


@dataclass
class Outcome:
    """How `run_steps` ended: stopped on request or not, stopped by the answer check or not, the last
    step run and what its event said, and the latest held-out eval (None when none ran)."""

    stopped: bool = False
    broke: bool = False
    step: int | None = None
    fields: dict = field(default_factory=dict)
    evaluation: dict | None = None


def run_steps(steps: Steps, take_step: TakeStep, config: TrainConfig, *, total: int, emit, should_stop,
              progress: "Progress", tags: dict | None = None, evaluate: Callable[[], dict] | None = None,
              eval_due: Callable[[int], bool] = lambda step: False, eval_tags: dict | None = None,
              save_checkpoint: SaveCheckpoint | None = None, optimizer=None,
              check: Callable[[int], bool] | None = None, divergence: Divergence | None = None) -> Outcome:
    """The loop: each step, then its step event, then a held-out eval when one is due, then the user's
    stop request (a checkpoint, then return) or a periodic checkpoint.

    `check(step)`, run with each eval, returns True when the answers broke down: the loop ends there
    with outcome.broke (the caller decides what the run keeps).

    `total` is the run's last step (phases of one run share it); `tags` lead the step event (PPO's
    phase), `eval_tags` the eval event. Checkpoints carry `optimizer`'s state when given.

    `divergence` checks every step and every eval (divergence.py); when one diverges, the last sound adapter
    is put back, saved as the checkpoint, and Diverged raised (an error of kind "diverged").
    """
    outcome = Outcome()

    def stop_here() -> Outcome:
        if save_checkpoint and outcome.step is not None:
            save_checkpoint(outcome.step, optimizer=optimizer)
        outcome.stopped = True
        return outcome

    def keep_and_raise(exc: Diverged):
        if save_checkpoint and exc.kept_step is not None:
            save_checkpoint(exc.kept_step)  # no optimizer state: the exploded gradients are in it
        raise exc

    for step, epoch, batch in steps:
        if divergence is not None:
            divergence.before_step(step)
        try:
            try:
                with cancel.interruptible():  # a cancel abandons the step's forward and backward, not its update
                    fields, tokens = take_step(step, batch)
            except FloatingPointError as exc:
                if divergence is None:
                    raise
                divergence.fail(step, str(exc).replace(f" at step {step}", ""))
            if divergence is not None:
                divergence.after_step(step, fields["loss"], fields.get("grad_norm"))
        except cancel.Cancelled:
            return stop_here()
        except Diverged as exc:
            keep_and_raise(exc)
        emit("step", **(tags or {}), step=step, total_steps=total, epoch=epoch, **fields, **progress.fields(step, tokens))
        outcome.step, outcome.fields = step, fields
        cancel.step_committed()
        due = eval_due(step)
        try:
            with cancel.interruptible():
                if evaluate is not None and due:
                    outcome.evaluation = evaluate()
                    emit("eval", **(eval_tags or {}), step=step, **outcome.evaluation)
                    if divergence is not None:
                        divergence.after_eval(step, outcome.evaluation)
                if check is not None and due and check(step):
                    outcome.broke = True
                    return outcome
        except cancel.Cancelled:
            return stop_here()
        except Diverged as exc:
            keep_and_raise(exc)
        if should_stop() and step < total:
            return stop_here()
        if save_checkpoint and config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
            save_checkpoint(step, optimizer=optimizer)
    return outcome


class Progress:
    """Tokens/s, ETA and peak memory for step events, measured from the first step this process ran.

    A phase of a longer run (PPO's reward model and warm start) gives its last step and its name: its ETA
    is then to that step, named in `eta_of`. Its steps cost another time than the phases after it (on 36 picks
    on a 2-core CPU a reward-model step took about 1.8 s and a PPO step 6), so its rate times the run's
    remaining steps said about half of what was left; the phase's own end is what its rate can tell."""

    def __init__(self, start_step: int, total: int, phase_end: int | None = None, phase: str | None = None):
        self.start_step = start_step
        self.end = phase_end if phase_end is not None and phase_end < total else total
        self.phase = phase if self.end < total else None
        self.started = time.monotonic()
        self.tokens = 0

    def fields(self, step: int, tokens: int) -> dict:
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = step - self.start_step
        return {
            "tokens_per_s": self.tokens / elapsed,
            "eta_s": elapsed / max(done, 1) * (self.end - step),
            **({"eta_of": self.phase} if self.phase else {}),
            "peak_memory": measured_peak(),
            # torch's threads for the next step: the cores free over this one (cpu_share.py)
            **({"threads": threads} if (threads := cpu_share.after_training_step()) is not None else {}),
        }


def measured_peak() -> int:
    """Bytes at the run's peak so far, to check the memory plan against: CUDA's max allocated when the
    run uses a card, else the process's peak resident memory."""
    return memory_probe.peak_bytes("cuda" if torch.cuda.is_initialized() else "cpu")
