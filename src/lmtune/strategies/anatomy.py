"""Where things are in a transformer, read from parameter and module names.

Works for BERT-style encoders (``bert.embeddings``, ``bert.encoder.layer.N``), GPT-2
(``transformer.wte``, ``transformer.h.N``) and Llama-style decoders (``model.embed_tokens``,
``model.layers.N``), with or without a PEFT wrapper around them.
"""

from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDING_PARTS = ("embeddings.", "wte.", "wpe.", "embed_tokens.", "embed_positions.")
_HEAD_PARTS = ("classifier.", "score.", "qa_outputs.", "lm_head.", "pooler.", "cls.")


def layer_of(name: str) -> int | None:
    """The transformer block a parameter belongs to, or None (embeddings, head, final norm)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def is_embedding(name: str) -> bool:
    return any(part in name for part in _EMBEDDING_PARTS)


def is_head(name: str) -> bool:
    """The task head (and BERT's pooler, which feeds it): what a linear probe trains."""
    return any(part in name for part in _HEAD_PARTS)


def num_layers(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    indices = [layer_of(name) for name, _ in model.named_parameters()]
    return max((i for i in indices if i is not None), default=-1) + 1


def depth(name: str, layers: int) -> int:
    """Position from the bottom: embeddings 0, block i → i + 1, everything above the blocks → layers + 1."""
    if is_embedding(name):
        return 0
    index = layer_of(name)
    return index + 1 if index is not None else layers + 1


def decayed(name: str, layers: int, decay: float | None) -> float:
    """Layer-wise learning-rate factor: 1 for the head, ``decay ** k`` k levels below it; 1 without decay."""
    if decay is None:
        return 1.0
    return decay ** (layers + 1 - depth(name, layers))
