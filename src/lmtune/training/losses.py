"""A cross-entropy over large vocabularies that is fast on CPUs.

PyTorch's ``cross_entropy`` on (tokens × vocabulary) logits upcasts them to fp32, keeps the log-softmax
for the backward pass, and runs a log-softmax backward kernel that is slow on CPUs (it was 26% of a
training step of a small decoder; see benchmarks/pretrain_vs_trainer.py). Here the gradient,
softmax − target, is computed chunk by chunk in the forward pass, where the chunk's fp32 values are
still in cache, and stored in the logits' own dtype; backward only scales it. Same value, same gradient.
"""

from __future__ import annotations

import torch

from lmtune.data.collate import IGNORE_INDEX

CHUNK = 512
"""Rows per chunk: the fp32 copy of a chunk (rows × vocabulary) stays small enough to stay in cache."""


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(torch.float32)
        grad = torch.empty_like(logits) if logits.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        vocab = logits.shape[-1]
        for start in range(0, logits.shape[0], CHUNK):
            x = logits[start:start + CHUNK].to(torch.float32, copy=True)  # modified in place below
            keep = valid[start:start + CHUNK]
            target = targets[start:start + CHUNK].clamp(min=0)
            picked = x.gather(1, target[:, None]).squeeze(1)
            mean = x.mean(dim=-1) if smoothing else None
            # one exp pass gives both the log-sum-exp and the softmax (torch.logsumexp would take its own)
            top = x.amax(dim=-1)
            x.sub_(top[:, None]).exp_()
            sums = x.sum(dim=-1)
            lse = top + sums.log()
            nll = lse - picked
            if smoothing:
                nll = (1 - smoothing) * nll + smoothing * (lse - mean)
            total += (nll * keep).sum()
            if grad is not None:
                x.mul_((keep.to(x.dtype) / (count * sums))[:, None])  # softmax / count, zero on skipped rows
                scale = (keep.to(x.dtype) / count)[:, None]
                if smoothing:
                    x.sub_(scale * (smoothing / vocab))
                x.scatter_add_(1, target[:, None], -(1 - smoothing) * scale)
                grad[start:start + CHUNK] = x
        if grad is not None:
            ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        if bool(grad_output == 1):  # the usual case: spare a pass over the (tokens × vocabulary) gradient
            return grad, None, None
        return grad * grad_output.to(grad.dtype), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (rows × vocabulary) against ``targets`` (rows; IGNORE_INDEX rows skipped)."""
    valid = targets != IGNORE_INDEX
    if valid.float().mean() < 0.5:  # sparse targets (masked LM): score only the rows that count
        logits, targets = logits[valid], targets[valid]
    return _ChunkedCrossEntropy.apply(logits, targets, label_smoothing)
