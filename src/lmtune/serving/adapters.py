"""Several LoRA runs of one base behind one server: one copy of the base, every run's adapter loaded beside it in one
PEFT model, and one prediction queue whose batches mix requests for different adapters.

Runs are grouped when they are LoRA adapters (on torch) of the same base, for the same task that scores inputs
(classification, QA, ...: not the generating tasks, whose continuous batches run per run), with the same labels
and precision. The first run of a group is loaded as usual; the others only add their adapter (and head) to its
model (`PeftModel.load_adapter`), so the base is read and held once. A batch carries one ``adapter_index`` per row
and `AdapterRouter` turns it into PEFT's ``adapter_names``: each row runs through its own adapter and head, the
base's matrix products are shared by the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune import rundir
from lmtune.inference import LoadedRun, restore_task
from lmtune.models import load_tokenizer
from lmtune.strategies.lora import adapter_base, is_adapter_dir
from lmtune.strategies.qlora import is_qlora_adapter


class AdapterRouter(torch.nn.Module):
    """A PEFT model holding several adapters, called like a transformers model with an extra ``adapter_index``."""

    def __init__(self, model: torch.nn.Module, adapters: list[str]):
        super().__init__()
        self.model, self.adapters = model, adapters

    def forward(self, adapter_index: torch.Tensor, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs, adapter_names=[self.adapters[i] for i in adapter_index.tolist()])


@dataclass(eq=False)
class AdapterGroup:
    """Runs served from one base; ``router`` scores a batch that mixes their requests."""

    name: str
    router: AdapterRouter
    runs: list[str] = field(default_factory=list)
    bf16_copies: dict = field(default_factory=dict, repr=False)
    """bf16 copies of the shared weights (adapters included), made once for every run of the group."""


def group_key(path: Path, backend: str) -> tuple | None:
    """What runs must share to be served from one base (None: this run is served on its own)."""
    if backend != "torch" or not is_adapter_dir(path / rundir.MODEL):
        return None
    _, cfg, task_state = rundir.read_run(path)
    task = restore_task(cfg, task_state, path)
    if task.capabilities.generates:
        return None
    labels = tuple(task.label_names()) if task.capabilities.class_labels else None
    # a QLoRA adapter runs over a 4-bit base, a LoRA adapter over the full-precision one: two copies
    model = path / rundir.MODEL
    return (adapter_base(model), is_qlora_adapter(model), cfg.task, labels, cfg.train.precision,
            cfg.train.eval_batch, cfg.train.max_length)


def join(first: LoadedRun, path: Path, adapter: str) -> LoadedRun:
    """The run at ``path`` as a view of ``first``'s model, into which its adapter (and head) is loaded."""
    _, cfg, task_state = rundir.read_run(path)
    first.model.load_adapter(str(path / rundir.MODEL), adapter_name=adapter)
    first.model.eval()
    return LoadedRun(path, cfg, restore_task(cfg, task_state, path), first.model,
                     load_tokenizer(str(path / rundir.MODEL)))


def own_copy(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """A deep copy of a group's model holding ``adapter`` alone (an explanation's private model)."""
    import copy

    mine = copy.deepcopy(model)
    mine.set_adapter(adapter)
    for other in [name for name in mine.peft_config if name != adapter]:
        mine.delete_adapter(other)
    return mine
