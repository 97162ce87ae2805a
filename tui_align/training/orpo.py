"""ORPO with LoRA: SFT on the chosen answer plus lambda times the log odds-ratio term; no reference model.

Like TRL's ORPOTrainer, the per-answer log-probs are length-averaged (log P(y|x) in the paper is
a mean over the answer's tokens), and the logged rewards are lambda * mean log-prob.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import loop
from .config import TrainConfig
from .data import EncodedPair
from .events import EventSink
from .losses import orpo_loss


def _pair_terms(model, batch: list[EncodedPair], pad_id: int, lam: float):
    """(losses, log_odds, chosen_mean_logps, rejected_mean_logps, tokens) for one batch."""
    logps, counts, tokens = loop.batch_logps(model, batch, pad_id)
    mean_logps = logps / counts.clamp(min=1)
    n = len(batch)
    chosen, rejected = mean_logps[:n], mean_logps[n:]
    losses, log_odds = orpo_loss(chosen, rejected, -chosen, lam)
    return losses, log_odds, chosen.detach(), rejected.detach(), tokens


@torch.no_grad()
def evaluate(model, pairs: list[EncodedPair], pad_id: int, config: TrainConfig) -> dict:
    """Held-out accuracy (share where the chosen answer's mean log-prob beats the rejected one's), margin, loss."""
    model.eval()
    losses, chosen, rejected, odds = [], [], [], []
    for start in range(0, len(pairs), config.batch_size):
        batch = pairs[start : start + config.batch_size]
        batch_losses, log_odds, c, r, _ = _pair_terms(model, batch, pad_id, config.orpo.lam)
        losses.append(batch_losses)
        odds.append(log_odds)
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {
        "accuracy": (c > r).float().mean().item(),
        "margin": (config.orpo.lam * (c - r)).mean().item(),
        "loss": torch.cat(losses).mean().item(),
        "log_odds": torch.cat(odds).mean().item(),
    }


def train_orpo(
    model,
    tokenizer,
    train: list[EncodedPair],
    held_out: list[EncodedPair],
    config: TrainConfig,
    emit: EventSink,
    should_stop: Callable[[], bool],
    *,
    start_step: int = 0,
    save_checkpoint: loop.SaveCheckpoint | None = None,
    optimizer_state: dict | None = None,
) -> dict:
    """Train the active LoRA adapter with the ORPO loss; same events and stopping rules as train_dpo."""
    pad_id = tokenizer.pad_token_id
    lam = config.orpo.lam
    optimizer = loop.make_optimizer(model, config, optimizer_state)
    total = loop.total_steps(len(train), config)
    per_epoch = loop.steps_per_epoch(len(train), config.batch_size)
    progress = loop.Progress(start_step, total)
    metrics: dict = {"stopped": False}

    for step, epoch, batch in loop.schedule(train, config, start_step):
        model.train()
        (losses, log_odds, chosen, rejected), tokens = loop.accumulated_step(
            optimizer, batch, config, step, lambda part: _pair_terms(model, part, pad_id, lam))
        loss = losses.mean()
        emit(
            "step",
            step=step,
            total_steps=total,
            epoch=epoch,
            loss=loss.item(),
            nll=(-chosen).mean().item(),
            log_odds=log_odds.mean().item(),
            chosen_reward=(lam * chosen).mean().item(),
            rejected_reward=(lam * rejected).mean().item(),
            accuracy=(chosen > rejected).float().mean().item(),
            margin=(lam * (chosen - rejected)).mean().item(),
            **progress.fields(step, tokens),
        )
        metrics.update(train_loss=loss.item(), steps=step)
        evaluate_now = held_out and (step % per_epoch == 0 or step == total)
        run_eval = (lambda: evaluate(model, held_out, pad_id, config)) if evaluate_now else None
        if loop.finish_step(step, total, config, metrics, emit, run_eval, should_stop, save_checkpoint, optimizer):
            break
    model.eval()
    return metrics


def total_steps(train: list[EncodedPair], config: TrainConfig) -> int:
    """Steps an ORPO run takes (the runner's dispatch calls this for every method)."""
    return loop.total_steps(len(train), config)
