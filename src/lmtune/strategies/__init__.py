"""Strategies: one module per strategy, registered by name (``strategy.name`` in the config)."""

from lmtune.strategies import bitfit, freeze, full, head, llrd, lora, qlora  # noqa: F401  (registers them)
from lmtune.strategies.base import (
    STRATEGIES,
    Strategy,
    build_strategy,
    directory_size,
    knobs_of,
    trainable_parameters,
)

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "directory_size", "knobs_of", "trainable_parameters"]
