"""Log-probabilities of chosen tokens through the LM head, without keeping the (N, vocab) logits.

With a 49k vocabulary the logits of a DPO batch (2B answers x K tokens x V) are the largest tensor of
the step: about 0.6 GB at batch 8, and autograd keeps them until backward. Here the forward computes
them a chunk of rows at a time and keeps only logsumexp per row; backward recomputes each chunk's
logits (one extra head matmul, a few percent of the step) to form the gradient (onehot - softmax).

Under CPU bf16 autocast the head's products run in bf16 both ways, as autocast runs any Linear's: the weight
is cast once a pass rather than by autocast at every chunk (a copy of the whole 49k-row head each time), and
backward's product for the hidden states' gradient is a bf16 one, where it ran in float32 (autograd runs
backward outside autocast).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .losses import IGNORE_INDEX

CHUNK_ROWS = 512  # rows of logits alive at once: 512 x 49152 x 4 bytes = 100 MB for the default model


def _chunk_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    # The matmul runs in the model's dtype, the softmax in float32, as `label_logps(head(h))` does.
    return (hidden @ weight.T).float()


def _logsumexp_(logits: Tensor) -> Tensor:
    """logsumexp over the last dim, as torch.logsumexp computes it, with `logits` as its scratch space (it
    is left overwritten): a chunk's logits are too large to copy for each elementwise pass."""
    peak = logits.amax(dim=-1, keepdim=True)
    peak.masked_fill_(peak.isinf(), 0.0)  # as torch.logsumexp: rows of -inf stay -inf, a +inf stays +inf
    return logits.sub_(peak).exp_().sum(dim=-1).log_().add_(peak.squeeze(-1))


def _products_weight(weight: Tensor, autocast: tuple) -> Tensor:
    """`weight` in the dtype the head's products run in: autocast's where it is on (the cast autocast would
    make for each chunk, made once), else its own."""
    device, dtype, enabled = autocast
    eligible = weight.is_floating_point() and weight.dtype != torch.float64  # what autocast casts
    return weight.to(dtype) if enabled and eligible else weight


class _HeadLabelLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        logps = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(logps)
        scored = targets != IGNORE_INDEX
        safe = targets.masked_fill(~scored, 0)
        # backward must recompute the logits exactly as forward did (bf16 under --precision's CPU autocast),
        # or softmax = exp(logits - lse) no longer sums to 1; autograd runs backward outside autocast
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        products = _products_weight(weight, ctx.autocast)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], products)
            picked = logits.gather(-1, safe[rows].unsqueeze(-1)).squeeze(-1)
            lse[rows] = _logsumexp_(logits)
            logps[rows] = picked - lse[rows]
        logps = logps.masked_fill(~scored, 0.0)
        ctx.save_for_backward(hidden, weight, safe, scored, lse)
        ctx.chunk = chunk
        return logps

    @staticmethod
    def backward(ctx, grad_logps: Tensor):
        hidden, weight, safe, scored, lse = ctx.saved_tensors
        grad = (grad_logps * scored).float()  # unscored rows contribute nothing
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        device, dtype, enabled = ctx.autocast
        products = _products_weight(weight, ctx.autocast)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                logits = _chunk_logits(hidden[rows], products)
            # d logp / d logits = onehot(target) - softmax(logits), formed in place in the chunk's logits as
            # (softmax - onehot) * -grad, which is the same to the bit: each elementwise pass over a chunk
            # (512 x 49k) costs a tenth of its products on a CPU, and a fresh tensor each costs more
            dlogits = logits.sub_(lse[rows].unsqueeze(-1)).exp_()
            dlogits.scatter_add_(-1, safe[rows].unsqueeze(-1), -torch.ones_like(lse[rows]).unsqueeze(-1))
            dlogits.mul_(-grad[rows].unsqueeze(-1))
            if grad_hidden is not None:
                grad_hidden[rows] = (dlogits.to(products.dtype) @ products).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += dlogits.T @ hidden[rows].float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def head_label_logps(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = CHUNK_ROWS) -> Tensor:
    """log p(targets) under logits = hidden @ weight.T, 0 where targets is -100.

    Args:
        hidden: (..., H) final hidden states at the positions that predict each target.
        weight: (V, H) the LM head's weight (a head without bias).
        targets: (...) token ids, -100 where nothing is scored.

    Returns:
        (...) float32 log-probabilities; equal to `label_logps(hidden @ weight.T, targets)`.
    """
    shape = targets.shape
    flat = _HeadLabelLogps.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk)
    return flat.reshape(shape)
