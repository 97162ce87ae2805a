"""Linear layers that multiply a few rows at the price of one, for answering on the CPU.

A decoding step of N candidates multiplies N rows by every weight matrix. torch's CPU matmul (MKL) takes
x @ W.T for 2-8 rows at nearly N times one row's cost, while W @ x.T, the same product with the weight as
the left operand, costs about one row's (measured on the AMD EPYC, float32, 1-2 threads: a 1536x576 layer
at 4 rows 0.99 against 0.60 ms, the 49152x576 output layer 47.4 against 12.0 ms; docs/benchmarks.md §3b).
Only those row counts take the other order; one row, a prompt and training keep torch's own."""

from __future__ import annotations

import types

#: The row counts that take W @ x.T: a step of up to this many candidates (and a short prompt's rows).
MOST_ROWS = 8


def _weight_first(self, x):
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 2 <= rows <= MOST_ROWS:
        return F.linear(x, self.weight, self.bias)
    out = torch.mm(self.weight, x.reshape(rows, x.shape[-1]).t()).t()
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.out_features).contiguous()  # callers .view() it


def few_rows_fast(model) -> int:
    """Give `model`'s plain float32 CPU linear layers the weight-first product for a few rows; returns how
    many. Subclasses (bitsandbytes' 4-bit layers, peft's wrappers) keep their own forward; peft's LoRA
    wraps the plain layer it finds, so an adapter attached later still goes through it."""
    import torch

    changed = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module.weight.device.type == "cpu"
                and module.weight.dtype == torch.float32 and "forward" not in vars(module)):
            module.forward = types.MethodType(_weight_first, module)
            changed += 1
    return changed
