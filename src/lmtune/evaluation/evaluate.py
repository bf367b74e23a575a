"""The one evaluation and inference loop, for every task: validation during training, the training-sample
score, `lmtune eval`, `lmtune predict`, the report and (next) serving all go through `score_examples`.

It sorts the examples by length into token-sized batches (`eval_batches`), gives each process every
world-th batch, lets the task score each batch (one record per example), gathers the records on every
process and hands them back in example order; the task turns them into metrics (`Task.aggregate`) or
predictions (`Task.predictions`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch

from lmtune.data.batching import eval_batches
from lmtune.data.collate import TARGETS
from lmtune.evaluation.low_precision import BF16Cache, bf16_inputs, bf16_weights, wants_bf16
from lmtune.models import bare_model
from lmtune.tasks.base import Purpose, Scoring, Task


@torch.inference_mode()
def score_examples(
    model: torch.nn.Module,
    examples: list[dict],
    task: Task,
    batch_size: int,
    pad_id: int,
    accelerator: Any = None,
    autocast: Any = None,
    purpose: Purpose = "evaluate",
    bf16_cache: BF16Cache | None = None,
) -> list[Any]:
    """Every example's record from `Task.score_batch`, in ``examples`` order, on every process.

    Args:
        model: the model, accelerate-prepared (then the work is sharded over processes) or plain.
        examples: encoded examples.
        task: scores the batches.
        batch_size: examples per forward pass.
        pad_id: padding token id.
        accelerator: shards the work over its processes and supplies the autocast context when given.
        autocast: mixed-precision context for a plain model.
        purpose: ``evaluate`` (targets present) or ``predict``.
        bf16_cache: under bf16 the pass runs on bf16 copies of the weights (`low_precision`); copies kept
            here between passes, by the owner of weights that do not change (a loaded run).
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    module = bare_model(model)
    was_training = module.training
    module.eval()
    context = accelerator.autocast if accelerator else (lambda: autocast if autocast is not None else nullcontext())
    # bf16 weight copies swap each parameter's data for one of another dtype, which drops the gradient hooks
    # that DDP keeps on it: after the first evaluation the processes no longer averaged their gradients (found:
    # each trained on its own share and the main process saved its own). Several processes: plain autocast.
    bf16 = wants_bf16(accelerator, autocast) and world == 1
    try:
        with bf16_weights(module, bf16_cache) if bf16 else nullcontext():
            shard = eval_batches([task.example_length(ex) for ex in examples], batch_size)[rank::world]
            records = _score_shard(module, examples, shard, task, pad_id, Scoring(purpose, time.monotonic()),
                                   context, bf16)
    finally:
        module.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        records = {i: r for part in gather_object([records]) for i, r in part.items()}
    return [records[i] for i in range(len(examples))]


def _score_shard(module: torch.nn.Module, examples: list[dict], batches: list[list[int]], task: Task, pad_id: int,
                 scoring: Scoring, context: Any, bf16: bool) -> dict[int, Any]:
    """(example index → record) for this process's batches."""
    device = next(module.parameters()).device
    records: dict[int, Any] = {}
    for indices in batches:
        chosen = [examples[i] for i in indices]
        batch = {k: v.to(device) for k, v in task.collate(chosen, pad_id).items()}
        if bf16:
            batch = bf16_inputs(batch, keep=TARGETS)
        with context():
            scored = task.score_batch(module, batch, chosen, indices, scoring)
        records.update(zip(indices, scored, strict=True))
    return records


def evaluate_examples(model: torch.nn.Module, examples: list[dict], task: Task, batch_size: int, pad_id: int,
                      accelerator: Any = None, autocast: Any = None, example_losses: bool = False,
                      bf16_cache: BF16Cache | None = None) -> dict[str, Any]:
    """Loss and task metrics over labelled ``examples``; every process gets the same result.

    ``example_losses``: also return ``example_losses``, each example's loss in ``examples`` order.
    """
    records = score_examples(model, examples, task, batch_size, pad_id, accelerator, autocast, bf16_cache=bf16_cache)
    return task.aggregate(records, examples, example_losses)


def predict_examples(model: torch.nn.Module, examples: list[dict], task: Task, batch_size: int, pad_id: int,
                     rows: int, autocast: Any = None, bf16_cache: BF16Cache | None = None) -> list[dict[str, Any]]:
    """One prediction per input row (``rows`` of them; a row may have several examples, e.g. QA windows)."""
    records = score_examples(model, examples, task, batch_size, pad_id, autocast=autocast, purpose="predict",
                             bf16_cache=bf16_cache)
    return task.predictions(records, examples, rows)
