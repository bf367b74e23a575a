"""Training-only loss terms that fight overfitting (beyond what the task's own loss does)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rdrop_loss(model: Any, features: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], task: Any,
               alpha: float, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Drop (Liang et al., 2021): two dropout passes of the batch, task loss on both plus
    ``alpha`` × their symmetric KL divergence.

    The two passes run as one forward over the batch stacked twice (the dropout masks differ
    per row), which is faster than two forwards on CPU and GPU alike.

    Returns:
        (loss to optimise, the task loss alone, for logging)
    """
    doubled = {k: torch.cat([v, v]) for k, v in features.items()}
    outputs = model(**doubled)
    labels = {**batch, "labels": torch.cat([batch["labels"], batch["labels"]])}
    task_loss = task.loss(outputs, labels, label_smoothing=label_smoothing)
    first, second = outputs.logits.float().chunk(2)
    return task_loss + alpha * symmetric_kl(first, second), task_loss


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """½ (KL(a‖b) + KL(b‖a)) between the softmax distributions, averaged over rows."""
    log_a = F.log_softmax(logits_a.reshape(-1, logits_a.shape[-1]), -1)
    log_b = F.log_softmax(logits_b.reshape(-1, logits_b.shape[-1]), -1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)
