"""BitFit (Ben Zaken et al., 2022): only the bias terms (and the task head) train."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtune.strategies import anatomy
from lmtune.strategies.base import STRATEGIES, StrategyBase, set_trainable


@STRATEGIES.register("bitfit")
@dataclass(frozen=True)
class BitFit(StrategyBase):
    default_lr = 1e-3

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        return set_trainable(model, lambda name: name.endswith(".bias") or anatomy.is_head(name), new)
