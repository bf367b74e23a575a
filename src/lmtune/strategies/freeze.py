"""Frozen layers: the embeddings and the bottom k blocks stay fixed; the blocks above and the head train."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtune.errors import LmtuneError
from lmtune.strategies import anatomy
from lmtune.strategies.base import STRATEGIES, StrategyBase, set_trainable


def frozen_count(layers: int | float, total: int) -> int:
    """``layers`` as a block count: an integer is a count, a number strictly between 0 and 1 a fraction of
    ``total`` (the config refuses other floats)."""
    if isinstance(layers, float) and 0 < layers < 1:
        return round(layers * total)
    if layers > total:
        raise LmtuneError(f"strategy.layers: {layers} blocks to freeze, but the model has {total}")
    return int(layers)


def disable_dropout(model: torch.nn.Module, frozen: int) -> None:
    """No dropout in the frozen part: it then computes the same output every epoch, which makes it a fixed
    feature extractor (as in feature-based transfer) and lets its output be cached."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and anatomy.depth(name + ".", 1 << 30) <= frozen:
            module.p = 0.0


@STRATEGIES.register("freeze")
@dataclass(frozen=True)
class Freeze(StrategyBase):
    layers: int | float = 0.5
    """Bottom blocks to freeze (with the embeddings): a count, or a fraction of all blocks."""
    decay: float | None = None
    """Layer-wise learning-rate decay of the trainable blocks (see `llrd`); None for none."""
    default_lr = 1e-4

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        frozen = frozen_count(self.layers, anatomy.num_layers(model))
        disable_dropout(model, frozen)
        return set_trainable(model, lambda name: anatomy.depth(name, 1 << 30) > frozen, new)

    def frozen_bottom(self, layers: int) -> int | None:
        return frozen_count(self.layers, layers)

    def lr_scale(self, name: str, layers: int) -> float:
        return anatomy.decayed(name, layers, self.decay)
