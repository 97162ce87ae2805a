"""DPO with LoRA: the reference is the same base with the adapter switched off.

The reference log-probs never change during a run, so they are computed once, up front, for every
training and held-out pair, and looked up afterwards: each step is then one forward and backward
over chosen and rejected rows together, not two forwards.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import loop
from .config import TrainConfig
from .data import EncodedPair
from .events import EventSink
from .losses import dpo_loss


@torch.no_grad()
def reference_logps(model, pairs: list[EncodedPair], pad_id: int, batch_size: int) -> dict[int, tuple[float, float]]:
    """{id(pair): (ref chosen logp, ref rejected logp)}: the base model's summed answer log-probs."""
    model.eval()
    cache: dict[int, tuple[float, float]] = {}
    ordered = sorted(pairs, key=lambda p: p.length)  # similar lengths together: little padding
    with model.disable_adapter():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            logps, _, _ = loop.batch_logps(model, batch, pad_id)
            n = len(batch)
            for pair, chosen, rejected in zip(batch, logps[:n].tolist(), logps[n:].tolist()):
                cache[id(pair)] = (chosen, rejected)
    return cache


def _reference_tensors(cache: dict, batch: list[EncodedPair], device) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = zip(*(cache[id(p)] for p in batch))
    return torch.tensor(chosen, device=device), torch.tensor(rejected, device=device)


def _pair_terms(model, batch, cache, pad_id, settings):
    """(losses, chosen_rewards, rejected_rewards, tokens) for one batch through the current adapter."""
    logps, counts, tokens = loop.batch_logps(model, batch, pad_id)
    n = len(batch)
    ref_chosen, ref_rejected = _reference_tensors(cache, batch, logps.device)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], ref_chosen, ref_rejected, settings.beta)
    if settings.sft_weight:
        # DPO + NLL (RPO, Pang et al. 2024, arXiv:2404.19733, Eq. 2): plain DPO can lower the chosen
        # answer's likelihood along with the rejected one's (and with it the end-of-turn after it);
        # a length-normalised NLL on the chosen answer holds it up.
        losses = losses + settings.sft_weight * (-logps[:n] / counts[:n].clamp(min=1))
    return losses, chosen_rewards, rejected_rewards, tokens


@torch.no_grad()
def evaluate(model, pairs: list[EncodedPair], cache: dict, pad_id: int, config: TrainConfig) -> dict:
    """Held-out implicit-reward accuracy (share with r_chosen > r_rejected), mean margin and mean loss."""
    model.eval()
    losses, chosen, rejected = [], [], []
    for start in range(0, len(pairs), config.batch_size):
        batch = pairs[start : start + config.batch_size]
        batch_losses, rc, rr, _ = _pair_terms(model, batch, cache, pad_id, config.dpo)
        losses.append(batch_losses)
        chosen.append(rc)
        rejected.append(rr)
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    return {
        "accuracy": (rc > rr).float().mean().item(),
        "margin": (rc - rr).mean().item(),
        "loss": torch.cat(losses).mean().item(),
    }


def train_dpo(
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
    """Train the active LoRA adapter with the DPO loss; returns final metrics (held-out when there are any).

    Emits a step event per optimizer step and an eval event at the end of every epoch. When
    should_stop() turns true it saves a checkpoint and returns with metrics["stopped"] = True.
    """
    pad_id = tokenizer.pad_token_id
    cache = reference_logps(model, train + held_out, pad_id, config.batch_size)
    optimizer = loop.make_optimizer(model, config, optimizer_state)
    total = loop.total_steps(len(train), config)
    per_epoch = loop.steps_per_epoch(len(train), config.batch_size)
    progress = loop.Progress(start_step, total)
    metrics: dict = {"stopped": False}

    for step, epoch, batch in loop.schedule(train, config, start_step):
        model.train()
        (losses, chosen_rewards, rejected_rewards), tokens = loop.accumulated_step(
            optimizer, batch, config, step, lambda part: _pair_terms(model, part, cache, pad_id, config.dpo))
        loss = losses.mean()
        emit(
            "step",
            step=step,
            total_steps=total,
            epoch=epoch,
            loss=loss.item(),
            chosen_reward=chosen_rewards.mean().item(),
            rejected_reward=rejected_rewards.mean().item(),
            accuracy=(chosen_rewards > rejected_rewards).float().mean().item(),
            margin=(chosen_rewards - rejected_rewards).mean().item(),
            **progress.fields(step, tokens),
        )
        metrics.update(train_loss=loss.item(), steps=step)
        evaluate_now = held_out and (step % per_epoch == 0 or step == total)
        run_eval = (lambda: evaluate(model, held_out, cache, pad_id, config)) if evaluate_now else None
        if loop.finish_step(step, total, config, metrics, emit, run_eval, should_stop, save_checkpoint, optimizer):
            break
    model.eval()
    return metrics


def total_steps(train: list[EncodedPair], config: TrainConfig) -> int:
    """Steps a DPO run takes (the runner's dispatch calls this for every method)."""
    return loop.total_steps(len(train), config)
