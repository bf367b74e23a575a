"""Layer-wise learning-rate decay (Howard & Ruder, 2018; Clark et al., 2020): all parameters train, lower
blocks at geometrically smaller rates: block i of L gets ``lr * decay ** (L - i)``, the embeddings
``lr * decay ** (L + 1)``, the head ``lr``. The same as ``full`` with ``decay: 0.9``, and combinable
with ``freeze`` through its ``decay``."""

from __future__ import annotations

from dataclasses import dataclass

from lmtune.strategies.base import STRATEGIES
from lmtune.strategies.full import Full


@STRATEGIES.register("llrd")
@dataclass(frozen=True)
class LayerwiseDecay(Full):
    decay: float | None = 0.9
    default_lr = 1e-4
