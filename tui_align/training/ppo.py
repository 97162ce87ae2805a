"""Reward model + PPO (RLHF) on the prompts of the collected pairs, all on one base model: the orchestration
of its three phases and the PPO update. The rollouts are in rollouts.py, the warm start in warm_start.py,
the reward shaping in losses.py.

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
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from . import cancel, defaults, loop, losses, sft_reference
from .config import TrainConfig
from .data import EncodedPair
from .divergence import Divergence
from .job import Job
from .memory_plan import measure_rows
from .reward import (
    HEAD_FILE,
    POLICY_ADAPTER,
    REWARD_ADAPTER,
    adapter_parameters,
    evaluate_reward_model,
    load_reward_model,
    normalize_head,
    reward_steps,
    save_reward_model,
    scalar_head,
    train_reward_model,
)
from .rollouts import (answer_tail, generate_rollouts, picked_repetition, policy_forward, score_rollout, stop_token_ids,
                       unique_prompts)
from .warm_start import warm_start

VALUE_HEAD_FILE = "value_head.safetensors"
EVAL_PROMPTS = 16  # held-out prompts scored before and after PPO; enough to see a trend, cheap


def ppo_steps(n_prompts: int, config: TrainConfig) -> int:
    """Rollout batches in the PPO phase. Its budget, --max-steps when given (it overrides --epochs, as for
    DPO) else epochs over the prompts, counts updates on batch_size rollouts, as a DPO step is batch_size
    pairs; a PPO step samples `minibatches` such batches at once, so it takes that many fewer steps (rounded
    up). The budget counts the PPO phase only: the reward phase always runs to the end, since PPO against a
    half-trained reward model would be meaningless."""
    per_prompt = config.ppo.group_size if config.ppo.baseline == "group" else config.ppo.rollouts_per_prompt
    return math.ceil(defaults.steps(config, n_prompts * per_prompt) / config.ppo.minibatches)


def sample_rows(config: TrainConfig) -> int:
    """Answers sampled at once: a PPO step's rollouts, and the reward measures' batches."""
    return config.batch_size * config.ppo.minibatches


def total_steps(train: list[EncodedPair], config: TrainConfig) -> int:
    """All step events a PPO run emits: reward-model steps, warm-start steps, then PPO steps."""
    return (reward_steps(len(train), config) + defaults.sft_steps(config, len(train))
            + ppo_steps(len(unique_prompts(train)), config))


SAMPLES_PER_PROMPT = 2  # sampled answers per held-out prompt in the sampled measure


@torch.no_grad()
def mean_answer_reward(model, tokenizer, head, prompts: list[list[int]], tail, config: TrainConfig,
                       sampled: bool = False,
                       generating: Callable[[], ContextManager] = contextlib.nullcontext) -> float:
    """Mean reward-model score of the policy's answers to `prompts`: greedy, or SAMPLES_PER_PROMPT
    sampled each as PPO samples them, from a fixed seed so phases compare alike. Scored as PPO's
    objective scores them: an answer cut at max_new_tokens counts -missing_eos_penalty or less, since the
    reward model never saw a cut answer and rates long ones highly (a run that taught the policy to finish
    its answers showed a falling reward before)."""
    if not prompts:
        return float("nan")
    rows = [p for p in prompts for _ in range(SAMPLES_PER_PROMPT)] if sampled else prompts
    at_once = measure_rows(sample_rows(config), head.weight.device.type)
    scores, finished, _ = answer_scores(model, tokenizer, head, rows, tail, config, greedy=not sampled,
                                        seed=config.seed + 7, generating=generating, at_once=at_once)
    return losses.cut_off_scores(scores, finished, config.ppo.missing_eos_penalty).mean().item()


@torch.no_grad()
def answer_scores(model, tokenizer, head, rows: list[list[int]], tail, config: TrainConfig, *, greedy: bool,
                  seed: int, generating: Callable[[], ContextManager] = contextlib.nullcontext,
                  at_once: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reward model's score of one answer to each prompt row, whether the answer ended within
    max_new_tokens (PPO caps a cut answer's score: losses.cut_off_scores) and its length in tokens (its end
    token counted), generated `at_once` at a time (default: a PPO step's rollouts) from `seed` (the caller's
    random state is left as it was) inside `generating()`: the adapter set that answers, for instance the
    base with the adapters off. Scoring is outside it, with the reward adapter, in batches of the run's size."""
    scores, finished, tokens = [], [], []
    at_once = at_once or sample_rows(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(rows), at_once):
            with generating():
                rollout = generate_rollouts(model, tokenizer, rows[i : i + at_once], config, greedy=greedy)
            scores.append(_scores(model, head, rollout, tail, tokenizer.pad_token_id, config.batch_size))
            finished.append(rollout.finished)
            tokens.append(rollout.response_mask.sum(1))
    return torch.cat(scores), torch.cat(finished), torch.cat(tokens)


def save_value_head(value_head: nn.Linear, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in value_head.state_dict().items()}, folder / VALUE_HEAD_FILE)


def _reward_model(job: Job, reward_dir: Path | None, n_total: int):
    """(head, metrics): the run's saved reward model when resuming, else a freshly trained (and saved) one."""
    model, config = job.model, job.config
    if reward_dir is not None and (reward_dir / HEAD_FILE).is_file():
        job.emit("note", message=f"reusing the reward model in {reward_dir}")
        head, metrics = load_reward_model(model, reward_dir), {}
        if job.held_out:
            result = evaluate_reward_model(model, head, job.held_out, job.pad_id, config.batch_size)
            job.emit("eval", phase="reward", step=reward_steps(len(job.train), config), **result)
            metrics.update(reward_accuracy=result["accuracy"], reward_margin=result["margin"])
        return head, metrics
    head, metrics = train_reward_model(job, total_steps=n_total)
    if not metrics.get("stopped"):
        normalize_head(model, head, job.train, job.pad_id, config.batch_size)
        if reward_dir is not None:
            save_reward_model(model, head, reward_dir)
    return head, metrics


def _value_head(model, config: TrainConfig, run_dir: Path | None, resuming: bool) -> nn.Linear:
    """PPO's critic: zero at the start (config.ppo.value_init "zero"), so until it learns the advantages are
    the whitened rewards-to-go rather than a random head's values; the saved head when resuming."""
    value_head = scalar_head(model, seed=config.seed + 1)
    if config.ppo.value_init == "zero":
        with torch.no_grad():
            value_head.weight.zero_()
    saved = run_dir / VALUE_HEAD_FILE if run_dir is not None else None
    if resuming and saved is not None and saved.is_file():
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(str(saved), device=str(value_head.weight.device)))
    return value_head


def ppo_schedule(rows: list[list[int]], config: TrainConfig, n_ppo: int, first_step: int, start_step: int):
    """(step, epoch, prompt rows) for PPO's steps first_step+1 .. first_step+n_ppo, skipping those up to
    start_step: each epoch's shuffle is still drawn, so a resume sees the same batches after.

    A step's rows are `minibatches` batches of batch_size. With the group baseline a batch's rows are
    batch_size // group_size prompts, each group_size times in a row (one group per prompt); `rows` are then
    the prompts themselves."""
    group = config.ppo.group_size if config.ppo.baseline == "group" else 1
    per_batch = max(1, config.batch_size // group) * config.ppo.minibatches
    per_epoch = math.ceil(len(rows) / per_batch)
    generator = torch.Generator().manual_seed(config.seed)
    for ppo_step in range(n_ppo):
        if ppo_step % per_epoch == 0:
            order = torch.randperm(len(rows), generator=generator).tolist()
        step = first_step + ppo_step + 1
        if step <= start_step:
            continue
        k = ppo_step % per_epoch
        chosen = [rows[i] for i in order[k * per_batch : (k + 1) * per_batch]]
        yield step, (ppo_step + 1) / per_epoch, [row for row in chosen for _ in range(group)]


def train_ppo(job: Job) -> dict:
    """RLHF in three phases: the reward model, a supervised warm start of the policy, then PPO.

    Step events are numbered across the phases (phase "reward_model", "sft", "ppo"). `job.run_dir`,
    when given, receives `reward/` (adapter + head, once the reward phase ends) and
    `value_head.safetensors` (with each checkpoint); a resumed run reloads both and skips the
    steps already done. Returns metrics: reward_accuracy (held out), mean_reward_before /
    _after_sft / _after (the reward model's score of greedy answers to held-out prompts), kl;
    "stopped" when should_stop() cut it short.
    """
    model, tokenizer, config, emit, start_step = job.model, job.tokenizer, job.config, job.emit, job.start_step
    run_dir = Path(job.run_dir) if job.run_dir is not None else None
    reward_dir = run_dir / "reward" if run_dir is not None else None
    prompts = unique_prompts(job.train)
    eval_prompts = unique_prompts(job.held_out)[:EVAL_PROMPTS] or prompts[:EVAL_PROMPTS]
    n_reward, n_sft = reward_steps(len(job.train), config), defaults.sft_steps(config, len(job.train))
    n_ppo = ppo_steps(len(prompts), config)
    n_before_ppo, n_total = n_reward + n_sft, n_reward + n_sft + n_ppo
    tail = answer_tail(job.train, stop_token_ids(model, tokenizer))
    allowance = picked_repetition(job.train)
    value_head = None
    ppo_optimizer = None

    def checkpoint(step: int, optimizer=None) -> None:
        if run_dir is not None and value_head is not None:
            save_value_head(value_head, run_dir)
        if job.save_checkpoint is not None:
            job.save_checkpoint(step, optimizer=ppo_optimizer)

    def measure(name: str, step: int, generating: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        with cancel.interruptible():
            metrics[name] = mean_answer_reward(model, tokenizer, head, eval_prompts, tail, config,
                                               generating=generating)
            sampled = name.replace("mean_reward", "mean_sampled_reward")
            metrics[sampled] = mean_answer_reward(model, tokenizer, head, eval_prompts, tail, config, sampled=True,
                                                  generating=generating)
        emit("eval", phase="policy", step=step, reward=metrics[name], sampled_reward=metrics[sampled])

    emit("phase", name="reward_model")
    head, metrics = _reward_model(job, reward_dir, n_total)
    if metrics.get("stopped"):
        return metrics
    head.requires_grad_(False)
    model.set_adapter(POLICY_ADAPTER)  # the policy trains from here on; the reward adapter is frozen
    if any(p.requires_grad for p in adapter_parameters(model, REWARD_ADAPTER)):
        raise RuntimeError("the reward adapter is still trainable; PPO would change the reward model")
    # The base's answers: what a fresh policy adapter (B at zero) gives to the bit, without its layers' cost,
    # and still the base's when a resumed run's adapter has trained.
    measure("mean_reward_before", max(start_step, n_reward), generating=model.disable_adapter)

    if n_sft:
        emit("phase", name="sft")
        if warm_start(job, first_step=n_reward, total=n_total, checkpoint=checkpoint):
            return {**metrics, "stopped": True}
        measure("mean_reward_after_sft", n_before_ppo)

    emit("phase", name="ppo")
    resuming = start_step > n_before_ppo
    use_copy = _reference(job, n_sft, resuming, run_dir)
    value_head = _value_head(model, config, run_dir, resuming)
    ppo_rate = defaults.ppo_lr(config)
    ppo_optimizer = ppo_optimizer_for(model, value_head, ppo_rate, config)
    if resuming and job.optimizer_state is not None:
        try:
            ppo_optimizer.load_state_dict(job.optimizer_state)
        except ValueError:  # saved by a version whose optimizer had one group
            emit("note", message="the saved PPO optimizer state does not fit this version; it starts afresh")

    def take_step(step: int, batch_rows: list[list[int]]) -> tuple[dict, int]:
        stats = _ppo_update(model, tokenizer, head, value_head, ppo_optimizer, batch_rows, tail, job.pad_id, config,
                            use_copy, allowance)
        tokens = stats.pop("tokens")
        return stats, tokens

    grouped = config.ppo.baseline == "group"
    rows = prompts if grouped else [p for p in prompts for _ in range(config.ppo.rollouts_per_prompt)]
    outcome = loop.run_steps(
        ppo_schedule(rows, config, n_ppo, n_before_ppo, start_step), take_step, config,
        total=n_total, emit=emit, should_stop=job.should_stop,
        progress=loop.Progress(max(start_step, n_before_ppo), n_total), tags={"phase": "ppo"},
        save_checkpoint=checkpoint,
        divergence=Divergence(model, ppo_rate),
    )
    if outcome.step is not None:
        metrics["kl"] = outcome.fields["kl"]
    if outcome.stopped:
        metrics["stopped"] = True
        return metrics

    measure("mean_reward_after", n_total)
    if run_dir is not None:
        save_value_head(value_head, run_dir)
    return metrics


def ppo_optimizer_for(model, value_head: nn.Linear, rate: float, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the policy adapter at PPO's rate and the value head at value_head_lr_scale times it: the
    head has a few hundred weights and starts from nothing, and at the adapter's rate Adam would move each
    by at most 3e-5 a step (the reward head's reason for its own scale)."""
    return torch.optim.AdamW([
        {"params": adapter_parameters(model, POLICY_ADAPTER), "lr": rate},
        {"params": list(value_head.parameters()), "lr": rate * config.ppo.value_head_lr_scale},
    ], lr=rate, weight_decay=0.0)


def _reference(job: Job, n_sft: int, resuming: bool, run_dir: Path | None) -> bool:
    """Whether PPO's KL is to the frozen copy of the warm-started policy (True) or to the base (False).

    "sft" with a warm start: the copy is made as PPO starts (and kept in the run folder for a resume).
    Without a warm start the policy starts as the base, so the base is that reference, for free."""
    if job.config.ppo.reference != "sft" or n_sft == 0:
        return False
    if resuming and run_dir is not None:
        if sft_reference.load(job.model, run_dir):
            return True
        job.emit("note", message="this run kept no copy of its warm start; PPO's KL is to the base model")
        return False
    sft_reference.freeze_copy(job.model)
    if run_dir is not None:
        sft_reference.save(job.model, run_dir)
    return True


@torch.no_grad()
def _old_policy_terms(logps, values, ref_logps, shaped_scores, mask, settings) -> tuple[torch.Tensor, ...]:
    """(old_logps, old_values, kl, advantages, returns) from the old policy's log-probs and values."""
    old_logps, old_values = logps.detach(), values.detach()
    kl = losses.per_token_kl(old_logps, ref_logps) * mask
    rewards = losses.shaped_rewards(shaped_scores, kl, mask, settings.kl_coef)
    if settings.baseline == "group":
        advantages = losses.leave_one_out_advantages(rewards, mask, settings.group_size)
        returns = old_values  # no critic: the value loss is zero
    else:
        advantages, returns = losses.gae(rewards, old_values, mask, settings.gamma,
                                         defaults.ppo_gae_lambda(settings))
    return old_logps, old_values, kl, losses.whiten(advantages, mask), returns


def _scores(model, head, rollout, tail, pad_id: int, size: int) -> torch.Tensor:
    """score_rollout in chunks of `size` rows: the reward model's passes stay the size the run's memory
    plan gave a training batch, however many answers were sampled at once."""
    return torch.cat([score_rollout(model, head, rollout.select(rows), tail, pad_id)
                      for rows in loop.shuffled_batches(list(range(len(rollout.prompt_rows))), size)])


def _policy_terms(model, value_head, rollout, temperature: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """policy_forward in chunks of `size` rows, without gradients, as the batch's (B,R): each chunk runs as
    wide as its own answers (Rollout.select), 0 past them."""
    parts = [(rows, policy_forward(model, value_head, rollout.select(rows), temperature))
             for rows in loop.shuffled_batches(list(range(len(rollout.prompt_rows))), size)]
    shape = rollout.response_mask.shape
    return (_batch_wide([(rows, terms[0]) for rows, terms in parts], shape),
            _batch_wide([(rows, terms[1]) for rows, terms in parts], shape))


def _batch_wide(parts: list[tuple[list[int], torch.Tensor]], shape) -> torch.Tensor:
    """Chunks' (rows, R') terms as the batch's (B,R), 0 past each chunk's width, in the terms' own dtype
    (values are bf16 under CPU autocast)."""
    out = parts[0][1].new_zeros(shape)
    for rows, part in parts:
        out[rows, : part.shape[1]] = part.detach()
    return out


def _ppo_update(model, tokenizer, head, value_head, optimizer, prompt_rows, tail, pad_id, config: TrainConfig,
                sft_copy: bool = False, allowance: float = 0.0) -> dict:
    """One rollout batch, then `ppo_epochs` passes over it in minibatches of batch_size rows (shuffled when
    there are several), an optimizer step each; returns the step's statistics, the last update's loss. The
    KL is to the warm start's frozen copy when `sft_copy`, else to the base. An answer scores the reward
    model's score, capped when cut off and less a repetition term beyond `allowance` (the picks' own share of
    repeated 4-grams). The advantages are whitened over the whole batch, as its rollouts were sampled
    together."""
    settings = config.ppo
    size, rows_in_batch = config.batch_size, len(prompt_rows)
    several = rows_in_batch > size
    rollout = generate_rollouts(model, tokenizer, prompt_rows, config)
    mask = rollout.response_mask.float()
    terms = None
    with torch.no_grad():
        scores = _scores(model, head, rollout, tail, pad_id, size)
        repeats = losses.repeated_ngram_shares(rollout.responses, rollout.response_mask)
        shaped_scores = losses.repetition_penalized(
            losses.cut_off_scores(scores, rollout.finished, settings.missing_eos_penalty), repeats, allowance,
            settings.repetition_penalty)
        with sft_reference.reference_of(model, sft_copy):
            ref_logps, _ = _policy_terms(model, value_head, rollout, settings.temperature, size)
        if several:  # from the first update on the weights have moved: the old policy's own pass
            logps, values = _policy_terms(model, value_head, rollout, settings.temperature, size)
            terms = _old_policy_terms(logps, values, ref_logps, shaped_scores, mask, settings)

    model.train()
    value_head.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    shuffle = torch.default_generator if several else None  # several minibatches: a new order each epoch
    for _ in range(settings.ppo_epochs):
        for picked in loop.shuffled_batches(list(range(rows_in_batch)), size, shuffle):
            logps, values = policy_forward(model, value_head, rollout.select(picked), settings.temperature)
            index, width = torch.tensor(picked, device=mask.device), logps.shape[1]
            if terms is None:
                # One minibatch: its first pass runs the weights that sampled the rollouts, before any update of
                # this step, so its log-probs and values are the old policy's; no pass of their own.
                old_logps, old_values = (_batch_wide([(picked, t)], mask.shape) for t in (logps, values))
                terms = _old_policy_terms(old_logps, old_values, ref_logps, shaped_scores, mask, settings)
            old_logps, old_values, _, advantages, returns = (t[index, :width] for t in terms)
            policy_loss, clip_fraction = losses.ppo_policy_loss(logps, old_logps, advantages, mask[index, :width],
                                                                settings.clip)
            value_loss = (losses.ppo_value_loss(values, old_values, returns, mask[index, :width], settings.value_clip)
                          if settings.baseline != "group" else values.new_zeros(()))
            loss = policy_loss + settings.value_coef * value_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = loop.clip_gradients(params, config, 0)
            cancel.protect_rest_of_step()  # from the first update on, the step completes (its weights moved)
            optimizer.step()
    model.eval()
    kl = terms[2]
    return {
        "loss": loss.item(),
        "kl": (kl.sum(-1)).mean().item(),
        "reward": shaped_scores.mean().item(),  # what PPO maximises: a cut answer counts -penalty or less
        "value_loss": value_loss.item(),
        "clip_fraction": float(clip_fraction),
        "response_length": mask.sum(-1).mean().item(),
        "finished": rollout.finished.float().mean().item(),
        "repeats": repeats.mean().item(),  # the rollouts' share of repeated 4-grams
        "tokens": int(mask.sum().item()),
        "grad_norm": norm,
    }
