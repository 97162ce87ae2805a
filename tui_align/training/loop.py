"""Pieces every preference loop shares: the step schedule, the optimizer, the one-forward log-probs, timing.

DPO and ORPO differ only in their loss; everything around it lives here so each method module
reads as "compute the loss for a batch".
"""

from __future__ import annotations

import inspect
import math
import random
import time
from typing import Callable, Iterator

import torch

from .config import TrainConfig
from .data import EncodedPair, length_grouped_batches, preference_batch, shared_prompt_batch
from .head_logps import head_label_logps
from .losses import IGNORE_INDEX, label_logps, sequence_logps

SaveCheckpoint = Callable[..., None]  # save_checkpoint(step, optimizer=None)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def total_steps(n_train: int, config: TrainConfig) -> int:
    """Optimizer steps of a run: --max-steps when given (it overrides --epochs, as in transformers), else epochs."""
    if config.max_steps:
        return config.max_steps
    return config.epochs * steps_per_epoch(n_train, config.batch_size)


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


def make_optimizer(model, config: TrainConfig, state: dict | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) weights; restores `state` when resuming."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    if state is not None:
        optimizer.load_state_dict(state)
    return optimizer


def pass_tokens(pair: EncodedPair) -> int:
    """Tokens a pair puts through the model in the shared-prompt layout: the prompt once, both answers."""
    return len(pair.chosen_ids) + len(pair.rejected_ids) - pair.prompt_len


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
    whole batch, detached, and the tokens run. A non-finite loss stops the run before any weight changes.
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
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return tuple(torch.cat(column) for column in zip(*outputs)), tokens


def finish_step(step, total, config: TrainConfig, metrics: dict, emit, run_eval, should_stop, save_checkpoint,
                optimizer) -> bool:
    """The bookkeeping after each DPO/ORPO step: held-out eval when `run_eval` is given, a checkpoint when
    one is due or the user asked to stop. Returns True when the loop should stop now."""
    if run_eval is not None:
        result = run_eval()
        emit("eval", step=step, **result)
        metrics.update(eval_accuracy=result["accuracy"], eval_margin=result["margin"], eval_loss=result["loss"])
    if should_stop() and step < total:
        if save_checkpoint:
            save_checkpoint(step, optimizer=optimizer)
        metrics["stopped"] = True
        return True
    if save_checkpoint and config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
        save_checkpoint(step, optimizer=optimizer)
    return False


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _decoder_and_head(model):
    """(decoder, lm_head) when the logits are plainly lm_head(hidden), else None (softcapped or scaled logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def batch_logps(model, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed answer log-probs of chosen and rejected in one forward: ((2B,) logps, (2B,) answer lengths, tokens run).

    Rows 0..B-1 are the chosen answers, B..2B-1 the rejected ones. The prompt runs once per pair
    (`shared_prompt_batch`) and the LM head only at the positions that predict answer tokens:
    with a 49k vocabulary, prompt logits would be a large share of the compute for nothing.
    """
    parts = _decoder_and_head(model)
    if parts is None:
        return separate_logps(model, batch, pad_id)
    decoder, head = parts
    hidden, tensors, tokens = shared_prompt_forward(decoder, batch, pad_id)
    selected = hidden[tensors["rows"].unsqueeze(1), tensors["sources"]]  # (2B,K,H)
    targets = tensors["targets"]
    if type(head) is torch.nn.Linear and head.bias is None:
        logps = head_label_logps(selected, head.weight, targets).sum(-1)
    else:  # a head peft wraps, or one with a bias: the plain way, logits and all
        logps = label_logps(head(selected), targets).sum(-1)
    return logps, (targets != IGNORE_INDEX).sum(-1), tokens


def shared_prompt_forward(decoder, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, dict, int]:
    """The decoder over `shared_prompt_batch(batch)`: ((R,T,H) last hidden states, that batch's tensors on
    the decoder's device, tokens run). DPO/ORPO read answer positions from it, the reward model answer ends."""
    weight = next(decoder.parameters())
    tensors = {k: v.to(weight.device) for k, v in shared_prompt_batch(batch, pad_id, mask_dtype=weight.dtype).items()}
    hidden = decoder(
        input_ids=tensors["input_ids"],
        attention_mask=tensors["attention_mask"],
        position_ids=tensors["position_ids"],
        use_cache=False,
    ).last_hidden_state
    tokens = sum(pass_tokens(p) for p in batch)
    return hidden, tensors, tokens


def separate_logps(model, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The plain way, for models whose logits aren't lm_head(hidden): chosen and rejected as separate rows.

    The LM head still runs only from the earliest answer position on (`logits_to_keep`).
    """
    device = next(model.parameters()).device
    tensors = preference_batch(batch, pad_id)
    input_ids = tensors["input_ids"].to(device)
    attention_mask = tensors["attention_mask"].to(device)
    labels = tensors["labels"].to(device)
    width = input_ids.shape[1]
    kwargs = {}
    if _accepts_logits_to_keep(model):
        first_scored = min(p.prompt_len for p in batch)  # labels before this index are all -100
        keep = width - max(first_scored - 1, 0)
        kwargs["logits_to_keep"] = keep
        labels = labels[:, width - keep :]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1)
    return sequence_logps(logits, labels), counts, int(attention_mask.sum())


class Progress:
    """Tokens/s and ETA for step events, measured from the first step this process ran."""

    def __init__(self, start_step: int, total: int):
        self.start_step, self.total = start_step, total
        self.started = time.monotonic()
        self.tokens = 0

    def fields(self, step: int, tokens: int) -> dict:
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = step - self.start_step
        return {
            "tokens_per_s": self.tokens / elapsed,
            "eta_s": elapsed / max(done, 1) * (self.total - step),
        }
