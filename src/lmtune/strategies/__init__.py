"""Strategies: one module per strategy, registered by name (``strategy.name`` in the config)."""

from lmtune.strategies import bitfit, freeze, full, head, llrd, lora  # noqa: F401  (registers them)
from lmtune.strategies.base import STRATEGIES, Strategy, directory_size, trainable_parameters

__all__ = ["STRATEGIES", "Strategy", "directory_size", "trainable_parameters"]
