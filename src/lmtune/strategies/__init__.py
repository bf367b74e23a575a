"""Strategies: one module per strategy, registered by name (``strategy.name`` in the config)."""

from lmtune.strategies import full  # noqa: F401  (registers the strategy)
from lmtune.strategies.base import STRATEGIES, Strategy, trainable_parameters

__all__ = ["STRATEGIES", "Strategy", "trainable_parameters"]
