"""Row-sparse updates of the input word embeddings: only the rows a batch used are touched.

Full fine-tuning of the bundled MiniLM trains 22.7M parameters, 11.7M of them in the word-embedding
matrix, of which a batch of 32 SST-2 sentences uses a few hundred rows. A dense gradient makes every
step zero, fill, clip and AdamW-update all 30,522 rows; on 2 CPU cores that was about a fifth of the
step. With sparse embedding gradients and a lazy AdamW (the moments and weight decay of a row advance
when the row is used, as in TensorFlow's LazyAdam) the step does that work for the used rows only.
Every other parameter gets the usual fused AdamW.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lmtune.models import bare_model


@contextmanager
def sparse_word_embeddings(model: Any) -> Iterator[torch.nn.Parameter | None]:
    """While the block runs, the model's input word embeddings have sparse gradients; yields their weight.

    Yields None (and changes nothing) when they are frozen, or tied to an output layer, whose gradient
    is dense anyway (masked and causal language models, encoder-decoders with a shared vocabulary).
    """
    from transformers import PreTrainedModel

    inner = bare_model(model)
    # e.g. frozen-layer caching's wrapper is no PreTrainedModel: its embeddings are frozen
    embeddings = inner.get_input_embeddings() if isinstance(inner, PreTrainedModel) else None
    output = inner.get_output_embeddings() if embeddings is not None else None
    if (not isinstance(embeddings, torch.nn.Embedding) or not embeddings.weight.requires_grad
            or (output is not None and output.weight is embeddings.weight)):
        yield None
        return
    embeddings.sparse = True
    # duplicates of a row (a word used twice) are summed once here, so clipping and the update see one row each
    hook = embeddings.weight.register_post_accumulate_grad_hook(_coalesce)
    try:
        yield embeddings.weight
    finally:
        hook.remove()
        embeddings.sparse = False


def _coalesce(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.coalesce()


class LazyRowsAdamW(torch.optim.AdamW):
    """AdamW whose groups marked ``lazy_rows`` take sparse gradients and update only the rows present.

    The other groups go through AdamW's own (fused) step unchanged. State is AdamW's (step, exp_avg,
    exp_avg_sq per parameter), so checkpoints save and resume it like any optimizer.
    """

    def __init__(self, params: Any, **kwargs: Any):
        super().__init__(params, **kwargs)
        if any(g.get("lazy_rows") for g in self.param_groups):
            # fp16 loss scaling: a grad scaler then unscales the gradients itself before `step` (the fused
            # kernel's in-step unscaling would skip the rows updated here)
            self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        groups = self.param_groups
        # AdamW's step walks self.param_groups; it is shown the dense groups only (its kernels refuse sparse)
        self.param_groups = [g for g in groups if not g.get("lazy_rows")]
        try:
            loss = super().step(closure)
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("lazy_rows"):
                for param in group["params"]:
                    if param.grad is not None:
                        self._update_rows(param, group)
        return loss

    def _update_rows(self, param: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values().to(param.dtype)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denom = exp_avg_sq.div_(1 - beta2**step).sqrt_().add_(eps)
        weights = param.index_select(0, rows).mul_(1 - lr * decay)
        weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        param.index_copy_(0, rows, weights)


@torch.no_grad()
def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` that also takes (coalesced) sparse gradients; returns the total norm."""
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm(grads)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale)
    return total
