"""Reward model + PPO (RLHF) on the prompts of the collected pairs, all on one base model.

Four roles share the one set of base weights:
  policy      the "default" LoRA adapter (the only weights PPO trains, with the value head)
  reference   the same model under `model.disable_adapter()`
  reward      the "reward" LoRA adapter plus its scalar head (trained first, frozen during PPO)
  value       a second scalar head on the policy's final hidden states

Three phases: the reward model (Bradley-Terry on the pairs), a supervised warm start of the
policy on the chosen answers (InstructGPT's step 1: RL can only reinforce what it samples), then
PPO. One PPO step: sample answers to a batch of prompts, score each with the reward model, build
per-token rewards (-kl_coef * KL to the reference on every token, plus the score on the last
one), estimate advantages with GAE, then a few epochs of the clipped policy + value losses.
Tokens after the first EOS are masked out everywhere; the response mask is what the losses see.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import GenerationConfig

from . import losses
from .config import TrainConfig
from .data import EncodedPair, preference_batch, prompt_batch
from .events import EventSink
from .loop import accumulated_step
from .reward import (
    HEAD_FILE,
    POLICY_ADAPTER,
    REWARD_ADAPTER,
    adapter_parameters,
    evaluate_reward_model,
    final_hidden_states,
    load_reward_model,
    normalize_head,
    reward_scores,
    reward_steps,
    save_reward_model,
    scalar_head,
    shuffled_batches,
    train_reward_model,
)

VALUE_HEAD_FILE = "value_head.safetensors"
EVAL_PROMPTS = 16  # held-out prompts scored before and after PPO; enough to see a trend, cheap


@dataclass
class Rollout:
    """A batch of sampled answers; R is the longest answer, tokens after EOS are padding."""

    prompt_rows: list[list[int]]  # unpadded prompt ids, one list per row
    input_ids: torch.Tensor  # (B, P+R) left-padded prompt then answer
    attention_mask: torch.Tensor  # (B, P+R) 0 on left padding and after EOS
    response_mask: torch.Tensor  # (B, R) 1 on answer tokens up to and including the first EOS
    finished: torch.Tensor  # (B,) bool: the answer ended with EOS within max_new_tokens

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


def ppo_steps(n_prompts: int, config: TrainConfig) -> int:
    """Rollout batches in the PPO phase: --max-steps when given (it overrides --epochs, as for DPO),
    else epochs over the prompts. It counts PPO steps only: the reward phase always runs to the end,
    since PPO against a half-trained reward model would be meaningless."""
    if config.max_steps:
        return config.max_steps
    return config.epochs * math.ceil(n_prompts * config.ppo.rollouts_per_prompt / max(1, config.batch_size))


def total_steps(train: list[EncodedPair], config: TrainConfig) -> int:
    """All step events a PPO run emits: reward-model steps, warm-start steps, then PPO steps."""
    return reward_steps(len(train), config) + sft_steps(len(train), config) + ppo_steps(len(unique_prompts(train)), config)


def unique_prompts(pairs: list[EncodedPair]) -> list[list[int]]:
    """Each prompt once, in first-seen order: several picks on one turn are one PPO prompt."""
    seen: dict[tuple[int, ...], None] = {}
    for pair in pairs:
        seen.setdefault(tuple(pair.prompt_ids), None)
    return [list(ids) for ids in seen]


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config and the tokenizer (a chat model may have several)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def answer_tail(pairs: list[EncodedPair], stop_ids: list[int]) -> list[int]:
    """What the chat template puts after an answer's EOS (SmolLM2: a newline).

    The reward model was trained on templated sequences, so a sampled answer gets the same
    ending before it is scored; otherwise the head would read a token it never saw last.
    """
    if not pairs:
        return []
    ids = pairs[0].chosen_ids
    stops = [i for i, token in enumerate(ids) if token in stop_ids and i >= pairs[0].prompt_len]
    return list(ids[stops[-1] + 1 :]) if stops else []


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(B,R) 1 up to and including the first stop token, 0 after it."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device)).long()
    stops_before = is_stop.cumsum(-1) - is_stop  # stop tokens strictly before each position
    return (stops_before == 0).long()


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompt_rows: list[list[int]], config: TrainConfig, *, greedy: bool = False) -> Rollout:
    """Sample (or greedily decode) answers with the policy adapter, as generate() does in chat."""
    model.eval()
    stop_ids = stop_token_ids(model, tokenizer)
    batch = prompt_batch(prompt_rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    # PPO's ratio divides by the log-probs of the distribution the tokens were really drawn from, so
    # nothing else may shape it: top_k=0 overrides transformers' global top-k of 50, and the model's
    # own generation_config (whose set values fill in whatever we leave unset, a repetition penalty
    # say) is swapped for a blank one during the call.
    sampling = {"temperature": config.ppo.temperature, "top_k": 0, "top_p": 1.0} if not greedy else {}
    settings = GenerationConfig(
        do_sample=not greedy,
        max_new_tokens=config.ppo.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        **sampling,
    )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
    finally:
        base.generation_config = own
    responses = out[:, ids.shape[1] :]
    resp_mask = response_mask(responses, stop_ids)
    finished = (torch.isin(responses, torch.tensor(stop_ids, device=device)) & resp_mask.bool()).any(-1)
    return Rollout(
        prompt_rows=[list(r) for r in prompt_rows],
        input_ids=out,
        attention_mask=torch.cat([mask, resp_mask.to(mask.dtype)], dim=1),
        response_mask=resp_mask,
        finished=finished,
    )


@torch.no_grad()
def score_rollout(model, head: nn.Linear, rollout: Rollout, tail: list[int], pad_id: int) -> torch.Tensor:
    """(B,) reward-model scores of prompt + answer (+ the template's tail when the answer ended)."""
    rows = []
    for prompt, answer, keep, done in zip(rollout.prompt_rows, rollout.responses, rollout.response_mask, rollout.finished):
        answer_ids = answer[keep.bool()].tolist()
        rows.append(prompt + answer_ids + (tail if bool(done) else []))
    batch = prompt_batch(rows, pad_id)
    device = head.weight.device
    return reward_scores(model, head, batch["input_ids"].to(device), batch["attention_mask"].to(device))


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


def policy_forward(model, value_head: nn.Linear, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,R) log-probs of the sampled answer tokens and (B,R) values, with the active adapter.

    Only the answer positions go through the LM head; value[t] reads the state that emitted token t.
    Logits are divided by the sampling temperature so the log-probs are those of the sampler.
    """
    hidden = final_hidden_states(model, rollout.input_ids, rollout.attention_mask)  # (B,T,H)
    start = rollout.prompt_len - 1
    states = hidden[:, start:]  # (B,R+1,H): the last prompt state then every answer state
    logits = model.get_base_model().get_output_embeddings()(states).float() / temperature
    labels = rollout.responses.masked_fill(rollout.response_mask == 0, -100)
    labels = torch.cat([torch.full_like(labels[:, :1], -100), labels], dim=1)  # align with states
    logps = losses.token_logps(logits, labels)  # (B,R)
    values = value_head(states[:, :-1].float()).squeeze(-1)  # (B,R)
    return logps, values


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(B,R) per-token rewards: -kl_coef * KL on each answer token, the score added on the last one."""
    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(-1) * mask).argmax(-1)  # index of the last 1 (mask is 1s then 0s)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages normalised to mean 0, std 1 over answer tokens, as most PPO code does."""
    mean = losses.masked_mean(x, mask)
    var = losses.masked_mean((x - mean) ** 2, mask)
    return ((x - mean) * torch.rsqrt(var + 1e-8)) * mask


@torch.no_grad()
def greedy_reward(model, tokenizer, head, prompts: list[list[int]], tail, config: TrainConfig) -> float:
    """Mean reward-model score of the policy's greedy answers; the before/after measure."""
    if not prompts:
        return float("nan")
    scores = []
    for i in range(0, len(prompts), config.batch_size):
        rollout = generate_rollouts(model, tokenizer, prompts[i : i + config.batch_size], config, greedy=True)
        scores.append(score_rollout(model, head, rollout, tail, tokenizer.pad_token_id))
    return torch.cat(scores).mean().item()


def save_value_head(value_head: nn.Linear, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in value_head.state_dict().items()}, folder / VALUE_HEAD_FILE)


def _reward_model(model, tokenizer, train, held_out, config, emit, should_stop, reward_dir, n_total):
    """(head, metrics): the run's saved reward model when resuming, else a freshly trained (and saved) one."""
    if reward_dir is not None and (reward_dir / HEAD_FILE).is_file():
        emit("note", message=f"reusing the reward model in {reward_dir}")
        head, metrics = load_reward_model(model, reward_dir), {}
        if held_out:
            result = evaluate_reward_model(model, head, held_out, tokenizer.pad_token_id, config.batch_size)
            emit("eval", phase="reward", step=reward_steps(len(train), config), **result)
            metrics.update(reward_accuracy=result["accuracy"], reward_margin=result["margin"])
        return head, metrics
    head, metrics = train_reward_model(model, tokenizer, train, held_out, config, emit, should_stop, total_steps=n_total)
    if not metrics.get("stopped"):
        normalize_head(model, head, train, tokenizer.pad_token_id, config.batch_size)
        if reward_dir is not None:
            save_reward_model(model, head, reward_dir)
    return head, metrics


def _value_head(model, config: TrainConfig, run_dir: Path | None, resuming: bool) -> nn.Linear:
    value_head = scalar_head(model, seed=config.seed + 1)
    saved = run_dir / VALUE_HEAD_FILE if run_dir is not None else None
    if resuming and saved is not None and saved.is_file():
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(str(saved), device=str(value_head.weight.device)))
    return value_head


def sft_steps(n_train: int, config: TrainConfig) -> int:
    """Optimizer steps of the supervised warm start on the chosen answers."""
    return config.ppo.sft_epochs * math.ceil(n_train / max(1, config.batch_size))


def chosen_nll(model, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, int]:
    """(B,) per-token NLL of each chosen answer (the policy adapter active), and the tokens read."""
    tensors = preference_batch(batch, pad_id)
    device = next(model.parameters()).device
    n = len(batch)
    ids, mask, labels = (tensors[k][:n].to(device) for k in ("input_ids", "attention_mask", "labels"))
    keep = ids.shape[1] - (min(p.prompt_len for p in batch) - 1)  # the LM head skips prompt positions
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    return -losses.sequence_logps(logits, labels[:, -keep:], average=True), int(mask.sum())


def warm_start(model, tokenizer, train, config: TrainConfig, emit, should_stop, *, first_step, start_step, total, checkpoint) -> bool:
    """Supervised passes of the policy adapter over the chosen answers (InstructGPT's step 1).

    PPO only reinforces what the policy samples: a trait the base model never writes (a sign-off
    line, say) would never be rewarded, however well the reward model knows it. Returns True when
    should_stop() cut it short. Steps first_step+1.. are skipped up to start_step (resume).
    """
    n_steps = sft_steps(len(train), config)
    if n_steps == 0 or start_step >= first_step + n_steps:
        return False
    params = adapter_parameters(model, POLICY_ADAPTER)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    per_epoch = math.ceil(len(train) / config.batch_size)
    step, started, tokens = first_step, time.monotonic(), 0
    for _ in range(config.ppo.sft_epochs):
        for batch in shuffled_batches(train, config.batch_size, generator):
            step += 1
            if step <= start_step:
                continue
            model.train()
            (nll,), n_tokens = accumulated_step(
                optimizer, batch, config, step, lambda part: chosen_nll(model, part, tokenizer.pad_token_id))
            loss = nll.mean()
            tokens += n_tokens
            elapsed = time.monotonic() - started
            emit("step", phase="sft", step=step, total_steps=total, epoch=(step - first_step) / per_epoch,
                 loss=loss.item(), tokens_per_s=tokens / max(elapsed, 1e-9),
                 eta_s=elapsed / (step - max(start_step, first_step)) * (total - step))
            if should_stop() and step < total:
                checkpoint(step)
                return True
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint(step)
    model.eval()
    return False


def train_ppo(
    model,
    tokenizer,
    train: list[EncodedPair],
    held_out: list[EncodedPair],
    config: TrainConfig,
    emit: EventSink,
    should_stop: Callable[[], bool],
    *,
    start_step: int = 0,
    save_checkpoint: Callable[..., None] | None = None,
    run_dir: str | Path | None = None,
    optimizer_state: dict | None = None,
) -> dict:
    """RLHF in three phases: the reward model, a supervised warm start of the policy, then PPO.

    Step events are numbered across the phases (phase "reward_model", "sft", "ppo"). `run_dir`,
    when given, receives `reward/` (adapter + head, once the reward phase ends) and
    `value_head.safetensors` (with each checkpoint); a resumed run reloads both and skips the
    steps already done. Returns metrics: reward_accuracy (held out), mean_reward_before /
    _after_sft / _after (the reward model's score of greedy answers to held-out prompts), kl;
    "stopped" when should_stop() cut it short.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    reward_dir = run_dir / "reward" if run_dir is not None else None
    prompts = unique_prompts(train)
    eval_prompts = unique_prompts(held_out)[:EVAL_PROMPTS] or prompts[:EVAL_PROMPTS]
    n_reward, n_sft = reward_steps(len(train), config), sft_steps(len(train), config)
    n_ppo = ppo_steps(len(prompts), config)
    n_before_ppo, n_total = n_reward + n_sft, n_reward + n_sft + n_ppo
    tail = answer_tail(train, stop_token_ids(model, tokenizer))
    value_head = None
    ppo_optimizer = None

    def checkpoint(step: int) -> None:
        if run_dir is not None and value_head is not None:
            save_value_head(value_head, run_dir)
        if save_checkpoint is not None:
            save_checkpoint(step, optimizer=ppo_optimizer)

    def measure(name: str, step: int) -> None:
        metrics[name] = greedy_reward(model, tokenizer, head, eval_prompts, tail, config)
        emit("eval", phase="policy", step=step, reward=metrics[name])

    emit("phase", name="reward_model")
    head, metrics = _reward_model(model, tokenizer, train, held_out, config, emit, should_stop, reward_dir, n_total)
    if metrics.get("stopped"):
        return metrics
    head.requires_grad_(False)
    model.set_adapter(POLICY_ADAPTER)  # the policy trains from here on; the reward adapter is frozen
    if any(p.requires_grad for p in adapter_parameters(model, REWARD_ADAPTER)):
        raise RuntimeError("the reward adapter is still trainable; PPO would change the reward model")
    measure("mean_reward_before", max(start_step, n_reward))

    if n_sft:
        emit("phase", name="sft")
        if warm_start(model, tokenizer, train, config, emit, should_stop,
                      first_step=n_reward, start_step=start_step, total=n_total, checkpoint=checkpoint):
            return {**metrics, "stopped": True}
        measure("mean_reward_after_sft", n_before_ppo)

    emit("phase", name="ppo")
    resuming = start_step > n_before_ppo
    value_head = _value_head(model, config, run_dir, resuming)
    params = adapter_parameters(model, POLICY_ADAPTER) + list(value_head.parameters())
    ppo_optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    if resuming and optimizer_state is not None:
        ppo_optimizer.load_state_dict(optimizer_state)

    rows = [p for p in prompts for _ in range(config.ppo.rollouts_per_prompt)]
    per_epoch = math.ceil(len(rows) / config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    first = max(0, start_step - n_before_ppo)
    started, tokens = time.monotonic(), 0
    for ppo_step in range(n_ppo):
        if ppo_step % per_epoch == 0:
            order = torch.randperm(len(rows), generator=generator).tolist()
        if ppo_step < first:
            continue  # resuming: the shuffles are replayed, so the remaining batches are the same ones
        k = ppo_step % per_epoch
        batch_rows = [rows[i] for i in order[k * config.batch_size : (k + 1) * config.batch_size]]
        stats = _ppo_update(model, tokenizer, head, value_head, ppo_optimizer, batch_rows, tail, tokenizer.pad_token_id, config)
        step = n_before_ppo + ppo_step + 1
        tokens += stats.pop("tokens")
        elapsed = time.monotonic() - started
        emit(
            "step",
            phase="ppo",
            step=step,
            total_steps=n_total,
            epoch=(ppo_step + 1) / per_epoch,
            tokens_per_s=tokens / max(elapsed, 1e-9),
            eta_s=elapsed / (ppo_step + 1 - first) * (n_ppo - ppo_step - 1),
            **stats,
        )
        metrics["kl"] = stats["kl"]
        if should_stop() and step < n_total:
            checkpoint(step)
            metrics["stopped"] = True
            return metrics
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < n_total:
            checkpoint(step)

    measure("mean_reward_after", n_total)
    if run_dir is not None:
        save_value_head(value_head, run_dir)
    return metrics


def _ppo_update(model, tokenizer, head, value_head, optimizer, prompt_rows, tail, pad_id, config: TrainConfig) -> dict:
    """One rollout batch and `ppo_epochs` optimizer steps on it; returns the step's statistics."""
    settings = config.ppo
    rollout = generate_rollouts(model, tokenizer, prompt_rows, config)
    mask = rollout.response_mask.float()
    with torch.no_grad():
        scores = score_rollout(model, head, rollout, tail, pad_id)
        shaped_scores = cut_off_scores(scores, rollout.finished, settings.missing_eos_penalty)
        old_logps, old_values = policy_forward(model, value_head, rollout, settings.temperature)
        with model.disable_adapter():
            ref_logps, _ = policy_forward(model, value_head, rollout, settings.temperature)
        kl = losses.per_token_kl(old_logps, ref_logps) * mask
        rewards = shaped_rewards(shaped_scores, kl, mask, settings.kl_coef)
        advantages, returns = losses.gae(rewards, old_values, mask, settings.gamma, settings.gae_lambda)
        advantages = whiten(advantages, mask)

    model.train()
    value_head.train()
    for _ in range(settings.ppo_epochs):
        logps, values = policy_forward(model, value_head, rollout, settings.temperature)
        policy_loss, clip_fraction = losses.ppo_policy_loss(logps, old_logps, advantages, mask, settings.clip)
        value_loss = losses.ppo_value_loss(values, old_values, returns, mask, settings.value_clip)
        loss = policy_loss + settings.value_coef * value_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"PPO loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
    model.eval()
    return {
        "loss": loss.item(),
        "kl": (kl.sum(-1)).mean().item(),
        "reward": scores.mean().item(),
        "value_loss": value_loss.item(),
        "clip_fraction": float(clip_fraction),
        "response_length": mask.sum(-1).mean().item(),
        "finished": rollout.finished.float().mean().item(),
        "tokens": int(mask.sum().item()),
    }
