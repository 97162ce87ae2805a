"""A leaner LoRA forward while a CPU run decodes (the answer check, PPO's rollouts, the reward measures).

A decode step runs every LoRA layer on one token a row, so its cost is per call, not per FLOP: on the default
model a token step of a batch of 4 took 83-98 ms with the adapter on against 58 with it off (2-core EPYC,
bf16 autocast). Of each layer's extra time, peft's own bookkeeping (its argument checks, the adapter lookup,
the dtype round trip) was about a third, and the two rank-r products under autocast most of the rest: oneDNN
runs a bf16 product this small at 25-31 µs against 9-15 µs for the same product in float32. So while a
decode runs, each plain LoRA layer computes base(x) + B(A(x)) · scaling with the adapter's float32 weights
outside autocast: 69-75 ms a token step instead of 83-98.

The answers' distribution is the adapter's as peft computes it: bit for bit when the run decodes in float32
(the same products in the same order), more exactly than autocast's bf16 when it decodes in bf16 (the
update's log-probs then differ from the sampler's by bf16 rounding, as they already did: PPO takes them
from a pass of its own). Anything else takes peft's path: gradients on, a layer in training mode (dropout),
several active adapters, a variant (DoRA), a merged or disabled adapter, extra arguments, a quantized base
(its own layer class), a GPU (not measured there).
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
        if type(module) is LoraLinear and "forward" not in module.__dict__ and _plain(module):  # not nested
            module.forward = _lean_forward(module)
            covered.append(module)
    try:
        yield len(covered)
    finally:
        for module in covered:
            del module.forward  # the instance attribute goes; the class's forward (peft's) is back


def _plain(module) -> bool:
    active = [name for name in module.active_adapters if name in module.lora_A]
    return (len(active) == 1 and active[0] not in module.lora_variant and not module.merged
            and not module.disable_adapters and module.lora_A[active[0]].weight.device.type == "cpu")


def _lean_forward(module):
    peft_forward = type(module).forward.__get__(module)
    adapters = list(module.active_adapters)
    name = next(name for name in adapters if name in module.lora_A)
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
