"""The frozen base's linear weights kept in bf16 while a CPU run trains under bf16 autocast.

Autocast casts a float32 weight to bf16 for every product, and caches only the casts of weights that require
grad, so each frozen weight of the base was copied again at every use (forward, the reference pass, backward:
the MLP's weights 840 times in two DPO steps of the default model), and autograd kept every layer's copy until
backward. Kept in bf16 the products are the very ones autocast ran (it rounded the weights to bf16 for them
anyway), and the copies are gone: 0.07-0.1 GB less peak memory on the default model, two bytes a linear weight
on any model; the speed moved less than a 2-core VM's noise (docs/benchmarks.md §2).

Decoding (the answer check, PPO's rollouts) runs in whichever precision decodes faster on the machine
(`precision_probe` at DECODE_ROWS; `decode_in_bf16`). In float32, outside autocast, `float32_while` puts float32
copies of these weights back for the length of a decode, about 0.1-0.2 s each way for the default model: on a
Xeon that was a token faster than bf16 (117 against 137-153 ms for a batch of 4, with the output layer recast
at every token). In bf16, under autocast, these weights stay as they are and `head_in_bf16` gives the output
layer a bf16 copy for the decode: on a 2-core EPYC (family 25) 75-82 against 104-114 ms a token for a batch of
4. Every pass of the run, decodes included, sees the same bf16-rounded base; the adapter holds no base weights,
and exports merge into the base as loaded from its files.

Left in float32: the output layer (often the input embedding's own weight; head_logps casts it once a pass), the
adapters (trainable, or another adapter a PPO run switches to), and any layer already quantized.
"""

from __future__ import annotations

import contextlib
import weakref

_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> the linear layers kept in bf16
_DECODES_IN_BF16: "weakref.WeakSet" = weakref.WeakSet()  # models whose decodes run in bf16


def keep_in_bf16(model, placement) -> int:
    """Store `model`'s frozen float32 linear weights in bf16 where `placement` trains under CPU bf16 autocast
    with an unquantized base; returns how many layers changed (0 elsewhere)."""
    import torch

    if not placement.cpu_autocast or placement.quantization.mode != "none":
        return 0
    output = model.get_output_embeddings()
    head = output.weight if output is not None else None
    kept = []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or _is_adapter(name):
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32 or weight is head:
            continue
        weight.data = weight.data.to(torch.bfloat16)
        kept.append(module)
    if kept:
        _KEPT[model] = kept
    return len(kept)


def _is_adapter(name: str) -> bool:
    """peft's adapter layers (lora_A, lora_B, ...) and its trainable copies (modules_to_save)."""
    return any(part.startswith("lora_") or part == "modules_to_save" for part in name.split("."))


@contextlib.contextmanager
def float32_while(model):
    """Within the block, the layers `keep_in_bf16` kept in bf16 are float32 again (values unchanged); after
    it, bf16 again (exactly: they hold bf16 values)."""
    import torch

    kept = _KEPT.get(model, [])
    for module in kept:
        module.weight.data = module.weight.data.float()
    try:
        yield
    finally:
        for module in kept:
            module.weight.data = module.weight.data.to(torch.bfloat16)


def decode_in_bf16(model) -> bool:
    """From now on `model` decodes in bf16 (generate.decoding), where keep_in_bf16 kept its base in bf16;
    returns whether it does."""
    if not _KEPT.get(model):
        return False
    _DECODES_IN_BF16.add(model)
    return True


def decodes_in_bf16(model) -> bool:
    return model in _DECODES_IN_BF16


@contextlib.contextmanager
def head_in_bf16(model):
    """Within the block the output layer computes from a bf16 copy of its weight; after it, the very float32
    weight is back. Under autocast a float32 head is cast again at every token, the largest single weight
    of a small model (the default model's is a fifth of it); the copy is made once a decode."""
    import torch

    output = model.get_output_embeddings()
    if output is None or output.weight.dtype != torch.float32:
        yield
        return
    weight = output.weight.data
    output.weight.data = weight.to(torch.bfloat16)
    try:
        yield
    finally:
        output.weight.data = weight
