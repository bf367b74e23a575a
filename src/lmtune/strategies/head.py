"""Head only (linear probe): the pretrained body is a fixed feature extractor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtune.strategies import anatomy
from lmtune.strategies.base import STRATEGIES, StrategyBase, set_trainable
from lmtune.strategies.freeze import disable_dropout


@STRATEGIES.register("head")
@dataclass(frozen=True)
class Head(StrategyBase):
    default_lr = 1e-3

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        disable_dropout(model, anatomy.num_layers(model))
        return set_trainable(model, anatomy.is_head, new)

    def frozen_bottom(self, layers: int) -> int | None:
        return layers
