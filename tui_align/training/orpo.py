"""ORPO (Hong et al. 2024): SFT on the chosen answer plus lambda times the log odds-ratio term, no
reference model; its loss terms as `preference.PairLoss`.

Like TRL's ORPOTrainer, the per-answer log-probs are length-averaged (log P(y|x) in the paper is
a mean over the answer's tokens), and the logged rewards are lambda * mean log-prob.
"""

from __future__ import annotations

import torch

from .config import ORPOSettings
from .losses import orpo_loss
from .preference import PairLogps, PairLoss


def terms(policy: PairLogps, reference: None, settings: ORPOSettings) -> tuple[torch.Tensor, ...]:
    """(losses, log_odds, chosen mean log-probs, rejected mean log-probs), each (B,)."""
    chosen = policy.chosen / policy.chosen_tokens.clamp(min=1)
    rejected = policy.rejected / policy.rejected_tokens.clamp(min=1)
    losses, log_odds = orpo_loss(chosen, rejected, -chosen, settings.lam)
    return losses, log_odds, chosen.detach(), rejected.detach()


def step_fields(values: tuple, settings: ORPOSettings) -> dict:
    log_odds, chosen, rejected = values
    lam = settings.lam
    return {
        "nll": (-chosen).mean().item(),
        "log_odds": log_odds.mean().item(),
        "chosen_reward": (lam * chosen).mean().item(),
        "rejected_reward": (lam * rejected).mean().item(),
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (lam * (chosen - rejected)).mean().item(),
    }


def summary(losses: torch.Tensor, values: tuple, settings: ORPOSettings) -> dict:
    """Held-out accuracy (share where the chosen answer's mean log-prob beats the rejected one's), margin, loss."""
    log_odds, chosen, rejected = values
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (settings.lam * (chosen - rejected)).mean().item(),
        "loss": losses.mean().item(),
        "log_odds": log_odds.mean().item(),
    }


LOSS = PairLoss(terms, step_fields, summary)
