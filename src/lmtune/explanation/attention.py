"""Attention weights of every layer and head, and attention rollout (Abnar & Zuidema, 2020).

Fused kernels (SDPA, flash) never materialise the weights, so the explained forward pass switches
the model to eager attention and back; the logits are the same (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _base(model: Any) -> Any:
    """The transformers model under a PEFT wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def eager_attention(model: Any) -> Iterator[Any]:
    """Run ``model`` with eager attention inside the block, whatever kernel it was loaded with."""
    base = _base(model)
    before = getattr(base.config, "_attn_implementation", None)
    if before not in (None, "eager"):
        base.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if before not in (None, "eager"):
            base.set_attn_implementation(before)


@torch.no_grad()
def attention_weights(model: Any, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """(layers, heads, seq, seq) attention probabilities of one unpadded example; each row sums to 1."""
    with eager_attention(model):
        outputs = model(**features, output_attentions=True)
    if not outputs.attentions:
        raise ValueError("the model returned no attention weights")
    return torch.stack([a[0].float() for a in outputs.attentions])


def rollout(attentions: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout: how much each output position draws on each input token through all layers.

    Each layer's head-averaged attention is mixed with the identity for the residual connection,
    ``residual * I + (1 - residual) * A``, rows renormalised, and the layers multiplied bottom-up.

    Args:
        attentions: (layers, heads, seq, seq).

    Returns:
        (seq, seq); row i is position i's distribution over the input tokens.
    """
    layers, _, seq, _ = attentions.shape
    eye = torch.eye(seq, dtype=attentions.dtype, device=attentions.device)
    result = eye
    for layer in range(layers):
        mixed = residual * eye + (1 - residual) * attentions[layer].mean(0)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result
