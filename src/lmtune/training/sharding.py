"""FSDP2 full fine-tuning across torchrun processes (``train.fsdp``): each process holds a share of every weight,
its gradient and its optimizer state instead of whole copies.

accelerate's FSDP plugin is not used: on CPU accelerate ignores it and wraps the model in DDP (checked), so lmtune
shards with torch's own `fully_shard` (per transformer block, then the rest) on every device and keeps accelerate
for autocast, random states and the scheduler. Run on CPU processes (gloo) only: no GPU was at hand. Checkpoints
hold each process's shard (torch.distributed.checkpoint, beside accelerate's files); the final model is gathered
and saved as ordinary transformers weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import LmtuneError

SHARDS = "shards"
"""A checkpoint's folder of per-process weights and optimizer state."""


def shard_model(model: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """Shard ``model`` over the process group: each block the model names as unsplittable (``_no_split_modules``,
    transformers' own list: decoder layers, encoder layers) is one unit gathered for its forward and backward,
    the rest (embeddings, final norm, head) is the root unit.

    ``bf16``: units are gathered in bf16 and their gradients averaged in fp32 into the fp32 shards. Gathered in
    fp32, autocast kept a bf16 copy of every gathered weight until the backward pass (its cast cache), a whole
    model per process that sharding was meant to save."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    units = blocks_of(model)
    if not units:
        raise LmtuneError(f"train.fsdp: {type(model).__name__} names no transformer blocks to shard by "
                          "(_no_split_modules); train it with train.fsdp=false")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def blocks_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules of the classes it names as unsplittable."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in blocks]


def largest_unit(model: torch.nn.Module) -> int:
    """Parameters of the largest unit `shard_model` gathers at once: a block, or the root's own (embeddings and
    head, gathered for the whole forward and backward pass)."""
    blocks = [sum(p.numel() for p in block.parameters()) for block in blocks_of(model)]
    return max([sum(p.numel() for p in model.parameters()) - sum(blocks), *blocks])


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def whole_weights(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, every process holds the whole weights and forward passes gather nothing: each process
    can evaluate (or generate) its own share of the examples, with as many forward passes as its share takes.
    A no-op for a model that is not sharded. Enter it outside inference mode (the gathered weights are reused by
    training)."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


class ShardedState:
    """Saves and restores the sharded model and its optimizer inside accelerate's `save_state` / `load_state`
    (their public pre-hooks): accelerate keeps writing the scheduler and random states, the shards go to
    ``CHECKPOINT/shards`` through torch.distributed.checkpoint, every process writing its own."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def register(self, accelerator: Any) -> None:
        accelerator.register_save_state_pre_hook(self._save)
        accelerator.register_load_state_pre_hook(self._load)

    def _save(self, models: list, weights: list, output_dir: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights.clear()  # accelerate would write the main process's shard as if it were the model
        model, optimizer = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model, "optimizer": optimizer}, checkpoint_id=Path(output_dir) / SHARDS)

    def _load(self, models: list, input_dir: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        models.clear()  # the shards are restored here, not from a model file
        model, optimizer = get_state_dict(self.model, self.optimizer)
        state = {"model": model, "optimizer": optimizer}
        dcp.load(state, checkpoint_id=Path(input_dir) / SHARDS)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights as plain CPU tensors (every process takes part; the main process saves them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
