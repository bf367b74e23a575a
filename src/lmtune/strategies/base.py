"""The strategy protocol: WHICH parameters train, at what learning rate, and how the result is saved."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import torch

from lmtune.config import StrategyConfig
from lmtune.registry import Registry


class Strategy(Protocol):
    default_lr: float
    """Learning rate used when the config gives none (LoRA at a full-fine-tuning rate barely learns)."""
    saves_base: bool
    """Whether the saved model holds every weight (False: adapters only, loaded over the base they came from)."""
    shardable: bool
    """Whether FSDP can shard its training (``train.fsdp``): every weight a plain trainable parameter of the model
    (full fine-tuning), not frozen or wrapped, which sharding saves nothing on."""

    def apply(self, model: torch.nn.Module, new: frozenset[str] = frozenset()) -> torch.nn.Module:
        """Return the trainable variant of ``model`` (freeze, wrap, ...).

        ``new``: parameters that loading initialised (not in the checkpoint) or re-sized; they always train.
        """

    def load_options(self, bf16: bool) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments for the base (QLoRA: load it quantized); ``bf16``: the run computes
        in bf16."""

    def lr_scale(self, name: str, layers: int) -> float:
        """Multiplier of the learning rate for parameter ``name`` (layer-wise decay); 1.0 for most."""

    def frozen_bottom(self, layers: int) -> int | None:
        """How many bottom blocks (with the embeddings) are frozen and deterministic, so their output can be
        cached; None when nothing is frozen that way."""

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Write the final model so that plain transformers (or PEFT) can load it."""


STRATEGIES: Registry[Strategy] = Registry("strategy")


def knobs_of(name: str) -> tuple[str, ...]:
    """The settings (``strategy.KNOB``) strategy ``name`` takes: the fields of its class."""
    return tuple(f.name for f in dataclasses.fields(STRATEGIES.get(name)))


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy object, with the knobs that were set (the others keep the strategy's defaults)."""
    return STRATEGIES.get(cfg.name)(**cfg.knobs())


class StrategyBase:
    """Defaults shared by the strategies: every parameter at the base rate, nothing cached, plain save."""

    default_lr = 5e-5
    saves_base = True
    shardable = False

    def load_options(self, bf16: bool) -> dict[str, Any]:
        return {}

    def lr_scale(self, name: str, layers: int) -> float:
        return 1.0

    def frozen_bottom(self, layers: int) -> int | None:
        return None

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)


def set_trainable(model: torch.nn.Module, keep: callable, new: frozenset[str] = frozenset()) -> torch.nn.Module:
    """Train exactly the parameters whose name satisfies ``keep``, and the ``new`` ones (random at start)."""
    for name, param in model.named_parameters():
        param.requires_grad = bool(keep(name)) or name in new
    return model


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def directory_size(path: Path) -> int:
    """Bytes on disk under ``path`` (what a saved model or checkpoint costs)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
