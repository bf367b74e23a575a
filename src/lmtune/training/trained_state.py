"""Checkpoints of a run with a frozen base hold only what training changes.

accelerate's `save_state` writes the model's whole state dict: a LoRA run on a 1.24B decoder wrote its 2.4 GB
base (bf16) into every checkpoint beside 3.4 MB of adapters, though the base never changes and the run loads it
again from its source when it resumes. Here the frozen weights stay out (through accelerate's public save and load
pre-hooks, as `sharding.ShardedState` does for shards), and a checksum of each is kept instead: a resume checks
that the base it loaded is the one the checkpoint was trained on, and refuses in one line when the source changed
(a model on the Hub updated in between, a local folder rewritten), rather than continuing on other weights.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import LmtuneError

TRAINED_FILE = "trained.safetensors"
"""A checkpoint's trained weights (and buffers); its metadata holds the frozen weights' checksums."""


def frozen_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the frozen parameters, every name of a tied one."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def leaves_base_out(model: torch.nn.Module, sharded: bool) -> bool:
    """Whether ``model``'s checkpoints hold its trained weights only: some are frozen, and it is not sharded
    (FSDP's checkpoints are its shards, `sharding.ShardedState`)."""
    return not sharded and bool(frozen_names(model))


class TrainedState:
    """Saves and restores ``model``'s trained weights only, inside accelerate's `save_state` / `load_state`."""

    def __init__(self, model: torch.nn.Module, main_process: bool):
        self.model, self.main_process = model, main_process
        self.frozen = frozen_names(model)
        # taken now, before anything converts the frozen weights (a LoRA base becomes bf16 in place)
        self.checksums = {name: _checksum(model.get_parameter(name)) for name in sorted(self.frozen)}

    def register(self, accelerator: Any) -> None:
        accelerator.register_save_state_pre_hook(self._save)
        accelerator.register_load_state_pre_hook(self._load)

    def _save(self, models: list, weights: list, output_dir: str) -> None:
        from safetensors.torch import save_file

        trained = {k: v.detach().contiguous().clone() for k, v in weights[0].items() if not self._frozen(k)}
        weights.clear()  # accelerate would write the whole state dict
        if self.main_process:
            save_file(trained, str(Path(output_dir) / TRAINED_FILE), metadata={"frozen": json.dumps(self.checksums)})

    def _load(self, models: list, input_dir: str) -> None:
        from safetensors import safe_open

        path = Path(input_dir) / TRAINED_FILE
        if not path.is_file():  # written before checkpoints left the base out: accelerate loads its model file
            return
        models.clear()  # restored here, not from a model file
        with safe_open(str(path), framework="pt") as handle:
            self._check_base(json.loads((handle.metadata() or {}).get("frozen", "{}")), path)
            trained = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        missing, unexpected = self.model.load_state_dict(trained, strict=False)
        absent = [k for k in missing if not self._frozen(k)]
        if absent or unexpected:
            raise LmtuneError(f"{path}: does not fit this run's model ({'missing ' + absent[0] if absent else ''}"
                              f"{'unexpected ' + unexpected[0] if unexpected else ''}); delete "
                              f"{path.parent.name} to resume from an earlier checkpoint")

    def _check_base(self, saved: dict[str, int], path: Path) -> None:
        changed = sorted(set(saved) ^ set(self.checksums)) or [k for k in saved if saved[k] != self.checksums[k]]
        if changed:
            raise LmtuneError(f"{path.parent}: trained on a frozen base other than the one loaded now "
                              f"({_as_in_source(changed[0])} differs): the model's source changed since the run "
                              "started; restore it, or train again into a new output")

    def _frozen(self, key: str) -> bool:
        """Whether ``key`` is a frozen weight or derived from one (a 4-bit weight's quantization state)."""
        parts = key.split(".")
        return any(".".join(parts[:i]) in self.frozen for i in range(len(parts), 0, -1))


def _as_in_source(name: str) -> str:
    """A weight's name as the model's own files have it (without DDP's and PEFT's wrapping)."""
    return name.removeprefix("module.").removeprefix("base_model.model.").replace(".base_layer.", ".")


def _checksum(tensor: torch.Tensor) -> int:
    data = tensor.detach().contiguous().reshape(-1)
    return zlib.crc32(data.view(torch.uint8).numpy() if data.numel() else b"")
