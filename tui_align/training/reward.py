"""The reward model: a second LoRA adapter ("reward") plus a scalar head, on the policy's own base.

No second copy of the model: peft keeps several adapters on one base and `set_adapter` picks
which one runs. The head reads the final hidden state of the last real token (found from the
attention mask, since this tokenizer's pad token is its EOS token) and gives one score per
sequence. Trained with the Bradley-Terry loss on chosen vs rejected answers.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from pathlib import Path
import torch
from torch import nn

from . import defaults, forward, losses, loop
from .config import TrainConfig
from .data import EncodedPair
from .divergence import Divergence
from .job import Job

POLICY_ADAPTER = "default"
REWARD_ADAPTER = "reward"
HEAD_FILE = "reward_head.safetensors"


def scalar_head(model, seed: int = 0) -> nn.Linear:
    """A Linear(hidden, 1) in float32 on the model's device; small random weights, zero bias.

    float32 whatever the model's dtype: the score feeds a sigmoid and the head is tiny.
    """
    hidden = model.get_base_model().config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden, 1)
    with torch.no_grad():
        # std 1/sqrt(hidden+1): scores start near +-1, as in TRL's value/reward heads
        head.weight.copy_(torch.randn(1, hidden, generator=generator) / math.sqrt(hidden + 1))
        head.bias.zero_()
    return head.to(next(model.parameters()).device)


def add_reward_adapter(model) -> None:
    """Attach a fresh "reward" LoRA adapter with the policy's settings.

    One left over from a cancelled run's checkpoint is replaced: its head was never saved, and a
    half-trained adapter under a new head is worse than a fresh start.
    """
    add_fresh_adapter(model, REWARD_ADAPTER)


def add_fresh_adapter(model, name: str) -> None:
    """Attach adapter `name` with the policy's LoRA settings, replacing one of that name; the policy
    stays the active (trainable) adapter."""
    if name in model.peft_config:
        model.delete_adapter(name)
    model.add_adapter(name, copy.deepcopy(model.peft_config[POLICY_ADAPTER]))
    # add_adapter leaves the active adapter alone; make sure the policy is the trainable one.
    model.set_adapter(POLICY_ADAPTER)


def save_named_adapter(model, name: str, folder: Path) -> None:
    """Write adapter `name` into `folder` in peft's layout, loadable with `load_named_adapter`."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, folder / "adapter_model.safetensors")
    model.peft_config[name].save_pretrained(folder)


def load_named_adapter(model, name: str, folder: Path) -> None:
    """Attach the adapter saved in `folder` as `name`, frozen, replacing one of that name; the policy
    stays active."""
    if name in model.peft_config:
        model.delete_adapter(name)
    model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
    model.set_adapter(POLICY_ADAPTER)


@contextmanager
def active_adapter(model, name: str):
    """Run with adapter `name`, then give the previously active adapter back.

    peft's set_adapter also flips requires_grad (only the active adapter trains). Restoring the
    previous adapter, not always the policy, matters when this nests inside a reward-model
    training step: freezing the reward adapter between its forward and backward would silently
    drop its gradients.
    """
    previous = model.active_adapter
    if previous == name:
        yield model
        return
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(previous)


def adapter_parameters(model, name: str) -> list[nn.Parameter]:
    """The LoRA weights of one adapter, by name (e.g. `...q_proj.lora_A.reward.weight`)."""
    return [p for n, p in model.named_parameters() if "lora_" in n and f".{name}." in n]


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded row is read as generate() saw it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,T,H) last-layer hidden states through the currently active adapter, without the LM head.

    Skipping lm_head saves a (B,T,vocab) matmul: the heads only need the hidden states.
    """
    decoder = model.get_base_model().get_decoder()
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of the mask; works for left and right padding."""
    length = attention_mask.shape[1]
    flipped_first = attention_mask.flip(-1).long().argmax(-1)
    return length - 1 - flipped_first


def reward_scores(model, head: nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores of whole sequences with the reward adapter; the caller picks grad or no_grad."""
    with active_adapter(model, REWARD_ADAPTER):
        hidden = final_hidden_states(model, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask)]  # (B,H)
    return head(last.float()).squeeze(-1)


REWARD_EPOCHS = 2  # passes over the pairs when reward_epochs is None, before the floor of MIN_STEPS


def reward_steps(n_train: int, config: TrainConfig) -> int:
    """Optimizer steps the reward phase takes: reward_epochs passes when set, else two passes but at
    least defaults.MIN_STEPS and at most defaults.MAX_STEPS, as the step budget of the policy."""
    per_epoch = defaults.steps_per_epoch(n_train, config.batch_size)
    if config.ppo.reward_epochs is not None:
        return config.ppo.reward_epochs * per_epoch
    return defaults.within_budget(REWARD_EPOCHS * per_epoch)


def _pair_scores(model, head, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chosen scores, rejected scores, tokens run) with the reward adapter, the prompt run once for both.

    The shared-prompt layout the DPO loop uses: each answer's last hidden state is exactly what its own
    sequence would give, for a third fewer tokens (and that much less activation memory).
    """
    with active_adapter(model, REWARD_ADAPTER):
        hidden, tensors, tokens = forward.shared_prompt_forward(model.get_base_model().get_decoder(), batch, pad_id)
    scores = head(hidden[tensors["rows"], tensors["ends"]].float()).squeeze(-1)  # (2B,)
    n = len(batch)
    return scores[:n], scores[n:], tokens


@torch.no_grad()
def evaluate_reward_model(model, head, pairs: list[EncodedPair], pad_id: int, batch_size: int) -> dict:
    """Held-out accuracy (share with r_chosen > r_rejected), mean margin and mean loss."""
    model.eval()
    chosen, rejected = [], []
    for batch in loop.shuffled_batches(pairs, batch_size):
        rc, rr, _ = _pair_scores(model, head, batch, pad_id)
        chosen.append(rc)
        rejected.append(rr)
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    return {
        "accuracy": (rc > rr).float().mean().item(),
        "margin": (rc - rr).mean().item(),
        "loss": losses.reward_loss(rc, rr).mean().item(),
    }


def reward_optimizer(model, head: nn.Linear, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the reward adapter at reward_learning_rate and the head at reward_head_lr_scale times it."""
    rate = config.ppo.reward_learning_rate
    return torch.optim.AdamW([
        {"params": adapter_parameters(model, REWARD_ADAPTER), "lr": rate},
        {"params": list(head.parameters()), "lr": rate * config.ppo.reward_head_lr_scale},
    ], lr=rate, weight_decay=0.0)


def train_reward_model(job: Job, *, total_steps: int | None = None) -> tuple[nn.Linear, dict]:
    """Train the "reward" adapter and a fresh head with Bradley-Terry; the policy adapter stays frozen.

    The head's scale is Bradley-Terry's arbitrary one; PPO puts it on a unit scale with `normalize_head`.
    Emits step events numbered 1..reward_steps (out of `total_steps`, the whole run's count) and an
    eval event with phase "reward" after each epoch. Returns (head, metrics); metrics["stopped"] is
    True when should_stop() cut it short.
    """
    model, config, pad_id = job.model, job.config, job.pad_id
    add_reward_adapter(model)
    head = scalar_head(model, seed=config.seed)
    per_epoch = loop.steps_per_epoch(len(job.train), config.batch_size)
    n_steps = reward_steps(len(job.train), config)
    total_steps = total_steps or n_steps
    optimizer = reward_optimizer(model, head, config)

    def terms(part: list[EncodedPair]):
        rc, rr, n = _pair_scores(model, head, part, pad_id)
        return losses.reward_loss(rc, rr), rc, rr, n

    def report(values: tuple) -> dict:
        rc, rr = values
        return {"chosen_reward": rc.mean().item(), "rejected_reward": rr.mean().item(),
                "accuracy": (rc > rr).float().mean().item(), "margin": (rc - rr).mean().item()}

    with active_adapter(model, REWARD_ADAPTER):  # inside, only "reward" requires grad; the policy is frozen
        outcome = loop.run_steps(
            loop.shuffled_schedule(job.train, config.batch_size, n_steps, config.seed),
            loop.accumulating(model, optimizer, config, terms, report), config,
            total=total_steps, emit=job.emit, should_stop=job.should_stop,
            progress=loop.Progress(0, total_steps, phase_end=n_steps, phase="reward model"),
            tags={"phase": "reward_model"},
            evaluate=(lambda: evaluate_reward_model(model, head, job.held_out, pad_id, config.batch_size))
            if job.held_out else None,
            eval_due=lambda step: step % per_epoch == 0 or step == n_steps, eval_tags={"phase": "reward"},
            divergence=Divergence(model, config.ppo.reward_learning_rate, held_out=len(job.held_out)),
        )
    metrics: dict = {"stopped": outcome.stopped}
    if outcome.evaluation is not None:
        metrics.update(reward_accuracy=outcome.evaluation["accuracy"], reward_margin=outcome.evaluation["margin"])
    model.eval()
    return head, metrics


@torch.no_grad()
def normalize_head(model, head: nn.Linear, pairs: list[EncodedPair], pad_id: int, batch_size: int) -> None:
    """Rescale the head so scores on the training answers have mean 0 and std 1.

    Bradley-Terry fixes only score differences, so the raw scale is arbitrary; on a unit scale
    PPO's kl_coef and missing-EOS penalty mean the same thing whatever the reward model learned.
    Folded into the head's weights, so a saved reward model needs no extra numbers. One more
    forward pass over the pairs: PPO's cost, so the reward trainer itself doesn't pay it.
    """
    model.eval()
    scores = []
    for batch in loop.shuffled_batches(pairs, batch_size):
        rc, rr, _ = _pair_scores(model, head, batch, pad_id)
        scores += [rc, rr]
    scores = torch.cat(scores)
    mean = scores.mean().item()
    std = max(scores.std().item(), 1e-3) if scores.numel() > 1 else 1.0
    head.weight.div_(std)
    head.bias.sub_(mean).div_(std)


def save_reward_model(model, head: nn.Linear, folder: str | Path) -> Path:
    """Write the "reward" adapter (peft layout, loadable with load_adapter) and the head into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    save_named_adapter(model, REWARD_ADAPTER, folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, folder / HEAD_FILE)
    return folder


def load_reward_model(model, folder: str | Path) -> nn.Linear:
    """Attach a saved reward adapter as "reward" and return its head; the policy stays active."""
    from safetensors.torch import load_file

    folder = Path(folder)
    load_named_adapter(model, REWARD_ADAPTER, folder)
    head = scalar_head(model)
    head.load_state_dict(load_file(str(folder / HEAD_FILE), device=str(head.weight.device)))
    return head
