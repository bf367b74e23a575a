"""The reference scores of tasks that compare a model with where it started (preference tuning), without a second
model in memory.

Before training, the starting model scores every train and validation example once (`score_examples`), and the
task keeps each example's record (`Task.attach_reference`). Under an adapter strategy the starting model *is*
the model with its adapters switched off (PEFT's ``disable_adapter``), so the same scores come from the model being
trained at any time; under strategies that change the base weights they come from the weights as loaded, before
the first step (a resumed run reloads the base before its checkpoint, so a recomputation gives the same numbers).

The scores are kept in the run directory (``reference-logps.json``) with a checksum of themselves and of the
examples they belong to, and reused on resume; a damaged or stale file is recomputed, with a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmtune.evaluation.evaluate import score_examples
from lmtune.models import bare_model
from lmtune.rundir import write_text_atomic
from lmtune.tasks.base import Task

log = logging.getLogger("lmtune")
REFERENCE_FILE = "reference-logps.json"


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a base with PEFT adapters (then the base is in it, and is the reference)."""
    from peft import PeftModel

    return isinstance(bare_model(model), PeftModel)


@contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[bool]:
    """Within the block a PEFT model runs as its base (yields True); any other model runs as it is (False)."""
    if not has_adapters(model):
        yield False
        return
    with bare_model(model).disable_adapter():
        yield True


def score_reference(model: torch.nn.Module, splits: dict[str, list[dict]], task: Task, batch_size: int,
                    pad_id: int, accelerator: Any = None, autocast: Any = None) -> dict[str, list]:
    """Each split's records from the starting model (adapters off)."""
    with adapters_off(model):
        return {name: score_examples(model, examples, task, batch_size, pad_id, accelerator, autocast)
                for name, examples in splits.items()}


def attach_reference(model: torch.nn.Module, splits: dict[str, list[dict]], task: Task, batch_size: int,
                     pad_id: int, accelerator: Any = None, autocast: Any = None, run_dir: Path | None = None,
                     main_process: bool = True) -> str:
    """Give every example of ``splits`` its reference record: from ``run_dir``'s saved scores when they are intact
    and belong to these examples, else computed now (and saved there). Returns what was done, for the log."""
    fingerprint = _fingerprint(splits)
    saved, problem = _read(run_dir / REFERENCE_FILE, fingerprint) if run_dir is not None else (None, None)
    if saved is None:
        saved = score_reference(model, splits, task, batch_size, pad_id, accelerator, autocast)
        if run_dir is not None and main_process:
            write_text_atomic(run_dir / REFERENCE_FILE, json.dumps(_payload(saved, fingerprint)))
        how = f"computed the reference scores of {sum(map(len, splits.values()))} examples"
        how += f" ({problem}; recomputed)" if problem else ""
    else:
        how = f"reused the reference scores in {REFERENCE_FILE}"
    for name, examples in splits.items():
        task.attach_reference(examples, saved[name])
    return how


def _fingerprint(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        for example in splits[name]:
            digest.update(json.dumps([example["input_ids"], example.get("labels"), example.get("rejected_ids"),
                                      example.get("rejected_labels")]).encode())
    return digest.hexdigest()


def _payload(scores: dict[str, list], fingerprint: str) -> dict[str, Any]:
    body = {"examples": fingerprint, "scores": scores}
    return {**body, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def _read(path: Path, fingerprint: str) -> tuple[dict[str, list] | None, str | None]:
    """(the saved scores, None), or (None, why they cannot be used; None when there is no file)."""
    if not path.is_file():
        return None, None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        body = {"examples": saved["examples"], "scores": saved["scores"]}
        intact = saved["sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        return None, f"{path.name} is damaged"
    if saved["examples"] != fingerprint:
        return None, f"{path.name} belongs to other data"
    return {name: [tuple(r) for r in records] for name, records in saved["scores"].items()}, None
