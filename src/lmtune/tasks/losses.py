"""A cross-entropy over large vocabularies that is fast on CPUs.

PyTorch's ``cross_entropy`` on (tokens × vocabulary) logits upcasts them to fp32, keeps the log-softmax
for the backward pass, and runs a log-softmax backward kernel that is slow on CPUs (it was 26% of a
training step of a small decoder; see benchmarks/pretrain_vs_trainer.py). Here the gradient,
softmax − target, is computed chunk by chunk in the forward pass, where the chunk's fp32 values are
still in cache (one reused fp32 buffer; one exp pass gives both the log-sum-exp and the softmax), and
stored in the logits' own dtype in a gradient buffer reused from step to step; backward hands it on
(scaled, when the loss was). Same value, same gradient. `benchmarks/profile_lm_step.py` measures it.
"""

from __future__ import annotations

import threading

import torch

from lmtune.data.collate import IGNORE_INDEX

CHUNK = 512
"""Rows per chunk at most: the fp32 copy of a chunk (rows × vocabulary) stays small enough to stay in cache."""
CHUNK_BYTES = 16 * 2**20
"""The fp32 chunk's size at most (512 rows of an 8K vocabulary, where the chunk size was measured): at a 151,936
vocabulary 512 rows made a 311 MB buffer, in no cache and on top of the step's peak."""


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for this vocabulary size."""
    return max(16, min(CHUNK, CHUNK_BYTES // (4 * vocab)))


class _GradientBuffer(threading.local):
    """The last (tokens × vocabulary) gradient, reused by the next forward of the same shape.

    A new buffer of that size costs a page fault per 4 KB at its first write: 33 ms of a 480 ms step of the
    8K-vocabulary decoder in `benchmarks/profile_lm_step.py`. A buffer is lent to one forward and returned by its
    backward (which runs to completion before the next forward of a training loop); a forward that finds it
    lent, as with two forwards before one backward, gets a new tensor.

    Only a shape that repeats is kept: batches of varying length (SFT) never reuse it, and a kept buffer of the
    last shape was held through the next step's forward for nothing (622 MB at 2 x 1,024 tokens of a 151,936
    vocabulary, on top of that step's peak). `release` drops it before work that does not train (evaluation).
    """

    def __init__(self):
        self.tensor: torch.Tensor | None = None
        self.last: tuple | None = None
        self.lent = False

    def take(self, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(a tensor shaped like ``like``, whether it is the pooled one)."""
        if self.lent:
            return torch.empty_like(like), False
        key = (like.shape, like.dtype, like.device)
        if self.tensor is None or self.last != key:
            repeated = self.last == key
            self.tensor, self.last = None, key  # the old shape's buffer goes before the new one is written
            if not repeated:
                return torch.empty_like(like), False
            self.tensor = torch.empty_like(like)
        self.lent = True
        return self.tensor, True

    def release(self) -> None:
        self.tensor, self.last, self.lent = None, None, False


_POOL = _GradientBuffer()


def release_buffers() -> None:
    """Drop the gradient buffer kept for the next training step of the same shape (before evaluation, at the end
    of training): it is as large as the logits."""
    _POOL.release()


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(torch.float32)
        grad, ctx.pooled = _POOL.take(logits) if logits.requires_grad else (None, False)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        vocab = logits.shape[-1]
        # one fp32 buffer for every chunk: a new 16 MB tensor per chunk cost 5x the copy itself in page faults
        rows = chunk_rows(vocab)
        buffer = torch.empty((min(rows, logits.shape[0]), vocab), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows):
            chunk = logits[start:start + rows]
            x = buffer[:chunk.shape[0]].copy_(chunk)  # modified in place below
            keep = valid[start:start + rows]
            target = targets[start:start + rows].clamp(min=0)
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
                grad[start:start + rows] = x
        if grad is not None:
            ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        if ctx.pooled:
            _POOL.lent = False  # the next forward may reuse it: this backward is its last reader but one (the head)
        if not bool(grad_output == 1):  # 1 is the usual case: no pass over the (tokens × vocabulary) gradient
            grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (rows × vocabulary) against ``targets`` (rows; IGNORE_INDEX rows skipped)."""
    valid = targets != IGNORE_INDEX
    if valid.float().mean() < 0.5:  # sparse targets (masked LM): score only the rows that count
        logits, targets = logits[valid], targets[valid]
    return _ChunkedCrossEntropy.apply(logits, targets, label_smoothing)


class _ChunkedLogProb(torch.autograd.Function):
    """Each row's log-probability of its target, chunk by chunk like `_ChunkedCrossEntropy`: the softmax is kept in
    the logits' dtype for the backward pass (no fp32 copy of the whole (rows × vocabulary) logits)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        out = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        probs = torch.empty_like(logits) if logits.requires_grad else None
        rows = chunk_rows(logits.shape[-1])
        buffer = torch.empty((min(rows, logits.shape[0]), logits.shape[-1]), dtype=torch.float32,
                             device=logits.device)
        for start in range(0, logits.shape[0], rows):
            x = buffer[:min(rows, logits.shape[0] - start)].copy_(logits[start:start + rows])
            keep = valid[start:start + rows]
            target = targets[start:start + rows].clamp(min=0)
            picked = x.gather(1, target[:, None]).squeeze(1)
            top = x.amax(dim=-1)
            x.sub_(top[:, None]).exp_()
            sums = x.sum(dim=-1)
            out[start:start + rows] = torch.where(keep, picked - top - sums.log(), 0.0)
            if probs is not None:
                probs[start:start + rows] = x.mul_((keep.to(x.dtype) / sums)[:, None])  # 0 on skipped rows
        if probs is not None:
            ctx.save_for_backward(probs, targets.clamp(min=0), valid)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, targets, valid = ctx.saved_tensors
        scale = (grad_output * valid).to(probs.dtype)[:, None]
        grad = probs.mul_(-scale)  # d log p(target) / d logits = onehot(target) - softmax
        return grad.scatter_add_(1, targets[:, None], scale), None


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its target (rows,), 0 where the target is IGNORE_INDEX; differentiable."""
    return _ChunkedLogProb.apply(logits, targets)
