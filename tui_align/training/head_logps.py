"""Log-probabilities of chosen tokens through the LM head, without keeping the (N, vocab) logits.

With a 49k vocabulary the logits of a DPO batch (2B answers x K tokens x V) are the largest tensor of
the step: about 0.6 GB at batch 8, and autograd keeps them until backward. Here the forward computes
them a chunk of rows at a time and keeps only logsumexp per row; backward recomputes each chunk's
logits (one extra head matmul, a few percent of the step) to form the gradient (onehot - softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .losses import IGNORE_INDEX

CHUNK_ROWS = 512  # rows of logits alive at once: 512 x 49152 x 4 bytes = 100 MB for the default model


def _chunk_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    # The matmul runs in the model's dtype, the softmax in float32, as `label_logps(head(h))` does.
    return (hidden @ weight.T).float()


class _HeadLabelLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        logps = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(logps)
        scored = targets != IGNORE_INDEX
        safe = targets.masked_fill(~scored, 0)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], weight)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(-1, safe[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        logps = logps.masked_fill(~scored, 0.0)
        ctx.save_for_backward(hidden, weight, safe, scored, lse)
        ctx.chunk = chunk
        # backward must recompute the logits exactly as forward did (bf16 under --precision's CPU autocast),
        # or softmax = exp(logits - lse) no longer sums to 1; autograd runs backward outside autocast
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return logps

    @staticmethod
    def backward(ctx, grad_logps: Tensor):
        hidden, weight, safe, scored, lse = ctx.saved_tensors
        grad = (grad_logps * scored).float()  # unscored rows contribute nothing
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        device, dtype, enabled = ctx.autocast
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                logits = _chunk_logits(hidden[rows], weight)
            # d logp / d logits = onehot(target) - softmax(logits)
            dlogits = -torch.exp(logits - lse[rows].unsqueeze(-1))
            dlogits.scatter_add_(-1, safe[rows].unsqueeze(-1), torch.ones_like(lse[rows]).unsqueeze(-1))
            dlogits.mul_(grad[rows].unsqueeze(-1))
            if grad_hidden is not None:
                grad_hidden[rows] = (dlogits.to(weight.dtype) @ weight).to(hidden.dtype)
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
