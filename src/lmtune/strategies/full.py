"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.strategies.base import STRATEGIES


@STRATEGIES.register("full")
@dataclass(frozen=True)
class Full:
    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        for param in model.parameters():
            param.requires_grad = True
        return model

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
