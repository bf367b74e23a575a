"""Full fine-tuning: every parameter trains (optionally with layer-wise learning-rate decay)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtune.strategies import anatomy
from lmtune.strategies.base import STRATEGIES, StrategyBase, set_trainable


@STRATEGIES.register("full")
@dataclass(frozen=True)
class Full(StrategyBase):
    decay: float | None = None
    """Layer-wise learning-rate decay factor (see `llrd`); None for one rate everywhere."""
    default_lr = 5e-5
    shardable = True

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        return set_trainable(model, lambda name: True)

    def lr_scale(self, name: str, layers: int) -> float:
        return anatomy.decayed(name, layers, self.decay)
