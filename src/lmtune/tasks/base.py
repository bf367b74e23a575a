"""The task protocol: WHAT is learned (data encoding, head, loss, metrics, predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.registry import Registry


class Task(Protocol):
    name: str
    primary_metric: str
    """The metric that picks the best checkpoint."""
    greater_is_better: bool

    def fit(self, train: Table, data: DataConfig) -> None:
        """Learn what the task needs from the training data (e.g. the label set); validate it."""

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        """Tokenized examples, with targets when the table has them."""

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        """The model with this task's head, loaded from a path or Hub id (kwargs go to from_pretrained)."""

    metric_names: tuple[str, ...]
    """Validation metrics a run can watch (early stopping, best checkpoint)."""

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean loss of a batch (``label_smoothing`` is used in training only)."""

    def example_losses(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of each example of a batch, (n,): the evidence for possible label noise."""

    def metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Task metrics over a whole evaluation set."""

    def predictions(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """One JSON-ready prediction per row of ``logits``."""

    def state(self) -> dict[str, Any]:
        """What must be saved with a run to rebuild this task (e.g. labels)."""


TASKS: Registry[Task] = Registry("task")
