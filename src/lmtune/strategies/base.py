"""The strategy protocol: WHICH parameters train, and how the trained model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from lmtune.registry import Registry


class Strategy(Protocol):
    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the trainable variant of ``model`` (freeze, wrap, ...)."""

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Write the final model so that plain transformers (or PEFT) can load it."""


STRATEGIES: Registry[Strategy] = Registry("strategy")


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
