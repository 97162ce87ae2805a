"""The frozen base's linear weights kept in bf16 while a CPU run trains under bf16 autocast.

Autocast casts a float32 weight to bf16 for every product, and caches only the casts of weights that require
grad, so each frozen weight of the base was copied again at every use (forward, the reference pass, backward:
the MLP's weights 840 times in two DPO steps of the default model), and autograd kept every layer's copy until
backward. Kept in bf16 the products are the very ones autocast ran (it rounded the weights to bf16 for them
anyway), and the copies are gone: 0.07-0.1 GB less peak memory on the default model, two bytes a linear weight
on any model; the speed moved less than a 2-core VM's noise (docs/benchmarks.md §2).

Decoding (the answer check, PPO's rollouts) runs outside autocast in float32, a token faster there than in bf16
on that Xeon (117 against 137-153 ms for a batch of 4), so `float32_while` puts float32 copies of these weights
back for the length of a decode, about 0.1-0.2 s each way for the default model. Every pass of the run, decodes
included, sees the same bf16-rounded base; the adapter holds no base weights, and exports merge into the base
as loaded from its files.

Left in float32: the output layer (often the input embedding's own weight; head_logps casts it once a pass), the
adapters (trainable, or another adapter a PPO run switches to), and any layer already quantized.
"""

from __future__ import annotations

import contextlib
import weakref

_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> the linear layers kept in bf16


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
