"""Inference on bf16 weights: every scoring pass (validation, eval, predict, serve, report) under bf16.

Under bf16 autocast an fp32 model casts each weight to bf16 at every use and bounces the activations
between bf16 (matrix products) and fp32 (layer norms, residual sums). Swapping in bf16 copies of the
weights for the length of a scoring pass removes both. Autocast stays on around the forward, as
before, so the ops autocast keeps in fp32 (the losses) are unchanged. A training run converts at each
validation (its weights change in place between passes, which no version counter reliably shows);
a loaded run, whose weights never change, keeps its copies in a cache it owns (`LoadedRun.bf16_copies`), so
prediction and a server convert once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

BF16Cache = dict[int, torch.Tensor]
"""id(parameter) → its bf16 copy, for weights that do not change while the cache lives."""


def wants_bf16(accelerator: Any, autocast: Any) -> bool:
    """Whether a scoring pass runs under bf16 autocast (the run's precision), from either of its sources."""
    if accelerator is not None:
        return accelerator.mixed_precision == "bf16"
    return isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16


def bf16_inputs(batch: dict[str, Any], keep: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The batch with its floating-point tensors (hidden states cached below frozen layers) in bf16, except the
    keys in ``keep`` (targets): a layer norm refuses an fp32 input with bf16 weights."""
    return {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and k not in keep else v
            for k, v in batch.items()}


@contextmanager
def bf16_weights(module: torch.nn.Module, cache: BF16Cache | None = None) -> Iterator[None]:
    """While the block runs (without gradients), the module's fp32 parameters hold bf16 copies of themselves.

    ``cache``: copies kept from an earlier pass (and filled here); only for weights that do not change.
    """
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param in module.parameters():
                if param.dtype != torch.float32:
                    continue
                copy = cache.get(id(param)) if cache is not None else None
                if copy is None:
                    copy = param.data.to(torch.bfloat16)
                    if cache is not None:
                        cache[id(param)] = copy
                swapped.append((param, param.data))
                param.data = copy
        yield
    finally:
        for param, original in swapped:
            param.data = original
