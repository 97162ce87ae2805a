"""Decoding inside a training run: greedy answers for the answer check and the trait benchmarks, and the
precision every decode of a run uses (PPO's rollouts too)."""

from __future__ import annotations

import contextlib

import torch

from . import gguf_decode
from .data import prompt_batch
from .frozen_bf16 import decodes_in_bf16, float32_while, head_in_bf16
from .lora_decode import lean_lora


@contextlib.contextmanager
def decoding(model):
    """The context `model` decodes in during a run, in the precision measured to decode faster on this machine
    (frozen_bf16.decode_in_bf16). In bf16: under CPU bf16 autocast with the base's weights as training keeps
    them (bf16) and a bf16 copy of the output layer. Else float32: outside autocast, which would recast every
    float32 weight at every token, with the base's weights float32 again; there, before the base was kept in
    bf16, greedy answers took 11.7 s under autocast against 5.8 s without, and a batch of 4 decoded at 205 ms
    a token against 117 (2-core Xeon). Training keeps the run's precision; on CUDA and in float32 runs this
    changes nothing. In bf16 the adapter's layers take lora_decode's float32 forward."""
    if decodes_in_bf16(model):
        with torch.autocast("cpu", dtype=torch.bfloat16), head_in_bf16(model), lean_lora(model):
            yield
        return
    with torch.autocast("cpu", enabled=False), float32_while(model):
        yield


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers to templated prompts (token ids), batched with left padding, in `decoding()`; the
    model's train/eval mode is left as it was."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        decoder = gguf_decode.decoder_of(model)
        answered = None if decoder is None else decoder.answers(model, prompts, max_new_tokens,
                                                                [tokenizer.eos_token_id], greedy=True)
        if answered is not None:
            return tokenizer.batch_decode(answered, skip_special_tokens=True)
        with decoding(model):
            for start in range(0, len(prompts), batch_size):
                rows = prompt_batch(prompts[start : start + batch_size], tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in rows.items()}
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                answers.extend(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return answers
