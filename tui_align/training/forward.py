"""One forward over a batch of pairs: the summed answer log-probs of chosen and rejected, computed
the cheap way (the prompt once per pair, the LM head only where answer tokens are predicted)."""

from __future__ import annotations

import inspect

import torch

from .data import EncodedPair, preference_batch, shared_prompt_batch
from .head_logps import head_label_logps
from .losses import IGNORE_INDEX, label_logps, sequence_logps


def pass_tokens(pair: EncodedPair) -> int:
    """Tokens a pair puts through the model in the shared-prompt layout: the prompt once, both answers."""
    return len(pair.chosen_ids) + len(pair.rejected_ids) - pair.prompt_len


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
