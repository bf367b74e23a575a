"""The run's data: train, validation and test tables, with a seeded validation split carved from train
when no validation file is given, and a seeded training fraction for learning curves."""

from __future__ import annotations

import random
from typing import Any

from lmtune.config import DataConfig
from lmtune.data.sources import Table
from lmtune.errors import DataError


def load_tables(data: DataConfig, task: Any) -> dict[str, Table]:
    """Read train/validation/test with the task's reader; the task checks (and learns from) the training rows.

    Args:
        data: the config's data section.
        task: a `lmtune.tasks.Task` (``read`` and ``learn_from_rows``).
    """
    train = task.read(data.train, "train").head(data.max_train_samples)
    task.learn_from_rows(train, data)
    tables = {"train": train}
    if data.validation:
        tables["validation"] = task.read(data.validation, "validation").head(data.max_eval_samples)
    else:
        held_out, kept = _split(len(train), data.validation_split, data.split_seed, train.source)
        tables["validation"] = train.take(held_out).head(data.max_eval_samples)
        tables["train"] = train.take(kept)
    if data.train_fraction < 1:
        order = list(range(len(tables["train"])))
        random.Random(data.split_seed).shuffle(order)
        keep = max(1, round(len(order) * data.train_fraction))
        tables["train"] = tables["train"].take(sorted(order[:keep]))
    if data.test:
        tables["test"] = task.read(data.test, "test").head(data.max_eval_samples)
    return tables


def _split(rows: int, fraction: float, seed: int, source: str) -> tuple[list[int], list[int]]:
    """(held-out rows, kept rows), each sorted: a seeded shuffle, the first ``fraction`` held out."""
    order = list(range(rows))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(rows * fraction))
    if rows - n_val < 1:
        raise DataError(f"{source}: {rows} rows are too few to hold out a validation split")
    return sorted(order[:n_val]), sorted(order[n_val:])
