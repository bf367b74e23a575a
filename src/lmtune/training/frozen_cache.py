"""Frozen layers are computed once: cache the output of the frozen bottom of the model.

When the embeddings and the bottom k blocks are frozen and deterministic (the strategies turn
their dropout off), their output for an example is the same every epoch. We compute it once,
before training, and from then on run only the blocks above it and the head.

The mechanism is generic over BERT-style encoders (``base_model.embeddings`` and
``base_model.encoder.layer``): the embeddings module is swapped for a stub that returns the
cached states, and the block list is cut to the blocks above k. The model's own forward does
the rest (masks, pooling, head), so the cached path computes what the full path computes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune.data import collate
from lmtune.data.batching import eval_batches

log = logging.getLogger("lmtune")

RAM_FRACTION = 0.4
"""Share of the available memory the cache may take before it goes to a memory-mapped file."""


class _CachedStates(torch.nn.Module):
    """Stands in for the embeddings: returns the cached output of the frozen bottom for this batch."""

    def __init__(self):
        super().__init__()
        self.states: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.states is None:
            raise RuntimeError("cached hidden states were not set for this batch")
        return self.states


class CachedForward(torch.nn.Module):
    """The model with its frozen bottom replaced by a lookup: ``forward(hidden=..., **features)``."""

    def __init__(self, model: torch.nn.Module, frozen: int):
        super().__init__()
        self.model = model
        base = model.base_model
        # kept outside the module tree: checkpoints and the optimizer see only what runs
        self.__dict__["_frozen_parts"] = (base.embeddings, base.encoder.layer)
        self._stub = _CachedStates()
        base.embeddings = self._stub
        base.encoder.layer = torch.nn.ModuleList(list(self.__dict__["_frozen_parts"][1])[frozen:])
        self.config = getattr(model, "config", None)

    def forward(self, hidden: torch.Tensor, **features: torch.Tensor) -> Any:
        self._stub.states = hidden
        try:
            return self.model(**features)
        finally:
            self._stub.states = None

    def restore(self) -> torch.nn.Module:
        """Put the frozen bottom back and return the complete model (for saving)."""
        base = self.model.base_model
        base.embeddings, base.encoder.layer = self.__dict__["_frozen_parts"]
        return self.model


def cacheable(model: torch.nn.Module) -> str | None:
    """Why the frozen bottom of ``model`` cannot be cached, or None if it can."""
    base = getattr(model, "base_model", None)
    if base is None or base is model or not hasattr(base, "embeddings"):
        return "the model has no separate embeddings module"
    if not hasattr(getattr(base, "encoder", None), "layer"):
        return "the model has no encoder.layer block list"
    if type(model).__name__.startswith("Peft"):
        return "PEFT-wrapped models are not cached"
    return None


@torch.inference_mode()
def compute_states(
    model: torch.nn.Module, frozen: int, examples: list[dict], pad_id: int, batch_size: int, autocast: Any,
    mode: str, spill_dir: Path,
) -> tuple[list[torch.Tensor], str]:
    """Output of the embeddings and the first ``frozen`` blocks for each example, (len_i, hidden) in fp32.

    Args:
        autocast: a callable returning the mixed-precision context (a fresh one per batch), or None.
        mode: ``memory``, ``disk`` (a memory-mapped file under ``spill_dir``) or ``auto`` (memory when the
            cache fits in ``RAM_FRACTION`` of the available memory).
    """
    base = model.base_model
    hidden_size = model.config.hidden_size
    lengths = [len(ex["input_ids"]) for ex in examples]
    store, mode = _allocate(sum(lengths), hidden_size, mode, spill_dir)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    was_training = model.training
    model.eval()
    for indices in eval_batches(lengths, batch_size):
        batch = collate([examples[i] for i in indices], pad_id)
        batch.pop("labels", None)
        with autocast() if autocast else nullcontext():
            states = _bottom(base, frozen, batch)
        for row, i in enumerate(indices):
            store[offsets[i]:offsets[i + 1]] = states[row, : lengths[i]].float().numpy()
    model.train(was_training)
    return [torch.from_numpy(store[offsets[i]:offsets[i + 1]]) for i in range(len(examples))], mode


def _bottom(base: torch.nn.Module, frozen: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the embeddings and the first ``frozen`` blocks as the model's own forward would."""
    layers = base.encoder.layer
    base.encoder.layer = torch.nn.ModuleList(list(layers)[:frozen])
    try:
        return base(**batch, return_dict=True).last_hidden_state
    finally:
        base.encoder.layer = layers


def _allocate(tokens: int, hidden: int, mode: str, spill_dir: Path) -> tuple[np.ndarray, str]:
    need = tokens * hidden * 4
    if mode == "auto":
        import psutil

        mode = "memory" if need <= RAM_FRACTION * psutil.virtual_memory().available else "disk"
    log.info("caching frozen-layer outputs: %.1f MiB in %s", need / 2**20, mode)
    if mode == "memory":
        return np.empty((tokens, hidden), dtype=np.float32), mode
    spill_dir.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=spill_dir, suffix=".f32", delete=False)
    handle.close()
    shape = (max(tokens, 1), hidden)
    return np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.float32, shape=shape), mode


def remove_spill(spill_dir: Path) -> None:
    shutil.rmtree(spill_dir, ignore_errors=True)


def attach_cache(
    model: torch.nn.Module, frozen: int | None, mode: str, splits: dict[str, list[dict]], pad_id: int,
    batch_size: int, accelerator: Any, spill_dir: Path,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Cache the frozen bottom's output for every example of every split and return the model that runs on
    it; return ``model`` unchanged when nothing is frozen, caching is off, or the architecture is unsupported.

    Returns:
        (model, {"cache": memory | disk | off, "cache_seconds": time spent computing the cache}).
    """
    if not frozen or mode == "off":
        return model, {"cache": "off", "cache_seconds": 0.0}
    reason = cacheable(model)
    if reason:
        log.info("frozen-layer cache off: %s", reason)
        return model, {"cache": "off", "cache_seconds": 0.0}
    start = time.perf_counter()
    for examples in splits.values():
        states, used = compute_states(
            model, frozen, examples, pad_id, batch_size, accelerator.autocast, mode, spill_dir
        )
        for example, state in zip(examples, states, strict=True):
            example["hidden"] = state
    return CachedForward(model, frozen), {"cache": used, "cache_seconds": round(time.perf_counter() - start, 3)}


def detach_cache(model: torch.nn.Module) -> torch.nn.Module:
    """The complete model, whether or not it ran on cached states."""
    return model.restore() if isinstance(model, CachedForward) else model
