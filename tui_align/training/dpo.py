"""DPO (Rafailov et al. 2023), optionally with an NLL term on the chosen answer (RPO): its loss terms
as `preference.PairLoss`. The reference is the base with the adapter switched off (`preference`)."""

from __future__ import annotations

import torch

from . import defaults
from .config import DPOSettings
from .losses import dpo_loss
from .preference import PairLogps, PairLoss


def terms(policy: PairLogps, reference: PairLogps, settings: DPOSettings) -> tuple[torch.Tensor, ...]:
    """(losses, chosen_rewards, rejected_rewards), each (B,)."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy.chosen, policy.rejected, reference.chosen,
                                                        reference.rejected, defaults.dpo_beta(settings))
    if settings.sft_weight:
        # DPO + NLL (RPO, Pang et al. 2024, arXiv:2404.19733, Eq. 2): plain DPO can lower the chosen
        # answer's likelihood along with the rejected one's (and with it the end-of-turn after it);
        # a length-normalised NLL on the chosen answer holds it up.
        losses = losses + settings.sft_weight * (-policy.chosen / policy.chosen_tokens.clamp(min=1))
    return losses, chosen_rewards, rejected_rewards


def step_fields(values: tuple, settings: DPOSettings) -> dict:
    chosen, rejected = values
    return {
        "chosen_reward": chosen.mean().item(),
        "rejected_reward": rejected.mean().item(),
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
    }


def summary(losses: torch.Tensor, values: tuple, settings: DPOSettings) -> dict:
    """Held-out implicit-reward accuracy (share with r_chosen > r_rejected), mean margin and mean loss."""
    chosen, rejected = values
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "loss": losses.mean().item(),
    }


LOSS = PairLoss(terms, step_fields, summary)
