"""Loss functions for DPO, ORPO, the reward model and PPO, and PPO's reward shaping: pure functions of tensors.

No model, tokenizer or loader in here, so each one can be checked against numbers worked out
by hand (tests/test_losses.py). Shapes: B = batch, T = sequence length, V = vocabulary.
Labels use -100 on tokens no loss should see (prompt, padding), as transformers does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .answer_checks import repeated_share

IGNORE_INDEX = -100


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is 1 (over `dim`, or everything when None).

    An all-zero mask gives 0 rather than NaN: an empty row should not poison a batch.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def label_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,K) log p(labels[b,k]) under logits[b,k], already aligned (no shift); 0 where labels is -100.

    Computed in float32 as logit[label] - logsumexp(logits): the same value as log_softmax +
    gather, without keeping a second (B,K,V) tensor alive for the backward pass.
    """
    logits = logits.float()
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0)  # -100 is no index; these positions are zeroed below
    picked = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(~mask, 0.0)


def _shifted_token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B,T-1) log p(label) at each position and the (B,T-1) bool mask of scored positions.

    Logits at position t predict the token at t+1, hence the shift.
    """
    labels = labels[:, 1:]
    return label_logps(logits[:, :-1, :], labels), labels != IGNORE_INDEX


def sequence_logps(logits: Tensor, labels: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each row's labelled tokens: (B,) sum, or mean when `average`.

    Args:
        logits: (B,T,V) model outputs.
        labels: (B,T) token ids, -100 on the prompt and padding; shifted by one inside.
    """
    logps, mask = _shifted_token_logps(logits, labels)
    total = logps.sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,T-1) per-token log p(label) (entry t scores labels[:, t+1]), 0 where masked. For PPO."""
    return _shifted_token_logps(logits, labels)[0]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO sigmoid loss, per pair, with the implicit rewards for logging.

    Args: four (B,) summed sequence log-probs (policy and reference, chosen and rejected); beta > 0.
    Returns: (losses, chosen_rewards, rejected_rewards), each (B,); rewards are detached.
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    # Eq. 7 of Rafailov et al. 2023 (arXiv:2305.18290):
    #   L = -log sigma(beta * [(log pi(yw|x) - log ref(yw|x)) - (log pi(yl|x) - log ref(yl|x))])
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    # Section 5: the implicit reward is r(x, y) = beta * log(pi(y|x) / ref(y|x)).
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012, "Accurately computing log(1-exp(-|a|))").

    x is clamped just below 0: a mean log-prob of exactly 0 (a certain answer) would give log(0).
    """
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_mean_logps: Tensor, rejected_mean_logps: Tensor, chosen_nll: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """ORPO: SFT loss on the chosen answer plus lam times the log odds-ratio loss, per pair.

    Args:
        chosen_mean_logps, rejected_mean_logps: (B,) length-averaged log-probs, log P(y|x) in the paper.
        chosen_nll: (B,) the SFT loss on the chosen answer, -mean log p (usually -chosen_mean_logps).
        lam: weight of the odds-ratio term (paper: lambda = 0.1).
    Returns: (losses (B,), log_odds (B,)), log_odds detached, for logging.
    """
    chosen = chosen_mean_logps.float()
    rejected = rejected_mean_logps.float()
    # Eq. 4 of Hong et al. 2024 (arXiv:2403.07691): odds(y|x) = P / (1 - P), so
    #   log(odds_w / odds_l) = (log Pw - log Pl) - (log(1 - Pw) - log(1 - Pl))
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    # Eq. 6-7: L_ORPO = L_SFT + lambda * L_OR, with L_OR = -log sigma(log odds ratio)
    losses = chosen_nll.float() - lam * F.logsigmoid(log_odds)
    return losses, log_odds.detach()


def reward_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """Bradley-Terry loss, (B,): -log sigma(r_chosen - r_rejected) (Ouyang et al. 2022, Eq. 1)."""
    return -F.logsigmoid(chosen_scores.float() - rejected_scores.float())


def per_token_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """(B,T) per-token KL estimate log pi - log ref at the sampled tokens (Schulman's k1 estimator)."""
    return logps - ref_logps


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438, Eq. 16).

    Args:
        rewards, values: (B,T) per-token reward and value estimate.
        mask: (B,T) 1 on response tokens; the step after the last 1 is terminal (value 0).
            A row's response tokens are expected to be one contiguous run.
        gamma, lam: discount and GAE lambda (RLHF usually uses gamma = 1, lam = 0.95).
    Returns: (advantages, returns), both (B,T), 0 outside the mask; returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        # next_mask is 0 past the end of the response, which ends the bootstrapping there
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]  # TD error delta_t
        running = delta + gamma * lam * next_mask * running  # A_t = delta_t + gamma*lam*A_{t+1}
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """The PPO clipped surrogate loss (Schulman et al. 2017, arXiv:1707.06347, Eq. 7), negated to minimise.

    Args: (B,T) log-probs now and at rollout time, advantages, response mask; clip = epsilon (0.2).
    Returns: (loss, clip_fraction), scalars; clip_fraction = share of tokens where the clipped term won.
    """
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logps.dtype), mask)
    return loss, clip_fraction.detach()


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float) -> Tensor:
    """Clipped value loss, scalar: 0.5 * mean max((V - R)^2, (V_clipped - R)^2), as in OpenAI baselines' ppo2.

    V_clipped keeps the new value within `clip` of the rollout-time value, so one batch can't move it far.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    squared = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return 0.5 * masked_mean(squared, mask)


# --- PPO's reward shaping ---------------------------------------------------------------------------


def cut_off_scores(scores: torch.Tensor, finished: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B,) scores where an answer cut off by max_new_tokens gets at most -penalty.

    The reward model never saw an unfinished answer, so its score there is an extrapolation, and
    a policy soon finds run-on text it over-rates. Scores are on a unit scale (mean 0 over the
    training answers), so "at most average, minus the penalty" holds whatever the reward model
    learned, while cut-off answers still rank among themselves. penalty 0 turns this off.
    """
    if not penalty:
        return scores
    return torch.where(finished, scores, scores.clamp(max=0.0) - penalty)


def repeated_ngram_shares(tokens: torch.Tensor, mask: torch.Tensor, n: int = 4) -> torch.Tensor:
    """(B,) for each row of (B,R) token ids, the share of its n-grams (within the mask) that repeat an earlier
    one (answer_checks.repeated_share): 0 for varied text, near 1 for a loop."""
    shares = [repeated_share([t for t, k in zip(row, keep) if k], n)
              for row, keep in zip(tokens.tolist(), mask.bool().tolist())]
    return torch.tensor(shares, dtype=torch.float32, device=tokens.device)


def repetition_penalized(scores: torch.Tensor, shares: torch.Tensor, allowance: float, penalty: float) -> torch.Tensor:
    """(B,) scores less `penalty` times each answer's repeated-n-gram share beyond `allowance` (the share the
    picked answers themselves repeat).

    The reward model learned from a few dozen picks, few if any of them loops, so it may rate a looping
    answer by whatever else it has: one that carries the picked trait and then loops as high as one that
    doesn't loop. Scores are unit-scale, so a full loop costs about `penalty`; 0 (PPO's default, config.py
    says why) turns this off."""
    if not penalty:
        return scores
    return scores - penalty * (shares.to(scores.dtype) - allowance).clamp(min=0.0)


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(B,R) per-token rewards: -kl_coef * KL on each answer token, the score added on the last one."""
    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(-1) * mask).argmax(-1)  # index of the last 1 (mask is 1s then 0s)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def leave_one_out_advantages(rewards: torch.Tensor, mask: torch.Tensor, group: int) -> torch.Tensor:
    """(B,R) advantages with a leave-one-out baseline (RLOO, Ahmadian et al. 2024, arXiv:2402.14740).

    Rows come in groups of `group` answers to one prompt. Each token's advantage is its reward-to-go
    (gamma 1) minus the mean whole-answer return of the other answers in its group: answers compete
    with answers to the same prompt only, so an easy prompt's high scores teach nothing by themselves.
    """
    mask = mask.to(rewards.dtype)
    to_go = (rewards * mask).flip(-1).cumsum(-1).flip(-1)  # sum of rewards from t to the end
    totals = to_go[:, 0].view(-1, group)  # (prompts, group): each answer's whole return
    others = (totals.sum(-1, keepdim=True) - totals) / (group - 1)
    return (to_go - others.reshape(-1, 1)) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages normalised to mean 0, std 1 over answer tokens, as most PPO code does."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return ((x - mean) * torch.rsqrt(var + 1e-8)) * mask
