"""The adapter's layers in float32 while a CPU run decodes in bf16 (generate.decoding: the answer check, PPO's
rollouts, the reward measures).

A decode step runs every LoRA layer on one token a row, products far too small to gain from bf16: under
autocast oneDNN ran a rank-16 product of 4 rows at 25-31 µs against 9-15 µs for the same product in float32
(2-core EPYC, family 25), and the default model's 210 LoRA layers made a token step of 4 rows 82 ms with the
adapter on against 57 with it off. With the adapter's products in float32, outside autocast, the step takes
72 ms (0.88x), one of 16 rows 110 against 133 (0.83x); `benchmarks/lora_decode.py`. (peft's own
bookkeeping is not what costs: the same bf16 products without it were no faster, and in a float32 decode,
where peft's products already are float32, the lean forward gained nothing: 110.3 against 110.5 ms.)

The answers' distribution is the adapter's as peft computes it, more exactly (float32 products, then the sum
in the base's bf16) than autocast's bf16 products; the update's log-probs differ from the sampler's by bf16
rounding, as they did before (PPO takes them from a pass of its own). Anything else takes peft's path:
gradients on, a layer in training mode (dropout), several active adapters, a variant (DoRA), a merged or
disabled adapter, extra arguments, a quantized base (its own layer class), a GPU (not measured there).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F


@contextlib.contextmanager
def lean_lora(model):
    """Within the block, `model`'s plain LoRA linear layers on the CPU take the lean forward when no gradient
    is wanted; after it, peft's forward again. Yields how many layers it covers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    covered = []
    for module in model.modules():
        if type(module) is not LoraLinear or "forward" in module.__dict__:  # another layer, or nested blocks
            continue
        name = plain_adapter(module)
        if name is not None:
            module.forward = _lean_forward(module, name)
            covered.append(module)
    try:
        yield len(covered)
    finally:
        for module in covered:
            del module.forward  # the instance attribute goes; the class's forward (peft's) is back


def plain_adapter(module) -> str | None:
    """The one plain LoRA adapter `module` runs now, on the CPU; None where peft's path must run."""
    active = [name for name in module.active_adapters if name in module.lora_A]
    if (len(active) == 1 and active[0] not in module.lora_variant and not module.merged
            and not module.disable_adapters and module.lora_A[active[0]].weight.device.type == "cpu"):
        return active[0]
    return None


def _lean_forward(module, name: str):
    peft_forward = type(module).forward.__get__(module)
    adapters = list(module.active_adapters)
    base, lora_a, lora_b = module.base_layer, module.lora_A[name].weight, module.lora_B[name].weight
    scaling = module.scaling[name]

    def forward(x, *args, **kwargs):
        if (args or kwargs or module.training or torch.is_grad_enabled() or module.disable_adapters
                or module.merged or module.active_adapters != adapters):  # switched inside the block
            return peft_forward(x, *args, **kwargs)
        out = base(x)
        with torch.autocast("cpu", enabled=False):
            delta = F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scaling
        return out + delta.to(out.dtype)

    return forward
