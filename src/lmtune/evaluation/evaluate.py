"""The evaluation loop: loss and task metrics over a labelled set (sharded over processes)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from lmtune.data import collate
from lmtune.data.batching import eval_batches
from lmtune.data.collate import TARGETS


@torch.inference_mode()
def forward_all(
    model: torch.nn.Module,
    examples: list[dict],
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    rank: int = 0,
    world_size: int = 1,
    extract: Any = None,
) -> tuple[list[int], Any, torch.Tensor | None]:
    """Logits for this process's share of ``examples``, with their indices and targets.

    Args:
        extract: model output → per-token scores (batch, seq, ...) to keep instead of ``.logits``
            (QA start/end); each example's are then cut to its own length and returned as a list.

    Returns:
        (indices into ``examples``, logits (n, ...) in fp32 or the list of extracted scores,
        targets (n,) or None when unlabelled or extracted).
    """
    was_training = model.training
    model.eval()
    lengths = [len(ex["input_ids"]) for ex in examples]
    batches = eval_batches(lengths, batch_size)[rank::world_size]
    indices, logits, targets = [], [], []
    for batch_indices in batches:
        batch = collate([examples[i] for i in batch_indices], pad_id)
        labels = batch.pop("labels", None)
        features = {k: v.to(device) for k, v in batch.items() if k not in TARGETS}
        with autocast if autocast is not None else nullcontext():
            out = model(**features)
        indices += batch_indices
        if extract is not None:
            scores = extract(out).float().cpu()
            logits += [scores[row, : len(examples[i]["input_ids"])] for row, i in enumerate(batch_indices)]
            continue
        logits.append(out.logits.float().cpu())
        if labels is not None:
            targets.append(labels)
    model.train(was_training)
    if extract is not None:
        return indices, logits, None
    if not logits:
        return [], torch.empty(0), None
    return indices, torch.cat(logits), torch.cat(targets) if targets else None


def evaluate_examples(
    model: torch.nn.Module,
    examples: list[dict],
    task: Any,
    batch_size: int,
    pad_id: int,
    accelerator: Any = None,
    autocast: Any = None,
    example_losses: bool = False,
) -> dict[str, Any]:
    """Loss and task metrics over labelled ``examples``; every process gets the same result.

    Args:
        model: the (possibly accelerate-prepared) model.
        examples: encoded examples with targets.
        task: the task (metrics, loss).
        batch_size: examples per forward pass.
        pad_id: padding token id.
        accelerator: shards the work over processes when given.
        autocast: context manager for mixed precision when the model is not accelerate-prepared.
        example_losses: also return ``example_losses``, each example's loss in ``examples`` order.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    if hasattr(task, "evaluate_model"):  # generation tasks: teacher-forced loss, then generated text
        unwrapped = accelerator.unwrap_model(model) if accelerator else model
        return task.evaluate_model(unwrapped, examples, batch_size, pad_id, device, autocast,
                                   example_losses=example_losses, shard=(rank, world))
    if hasattr(task, "evaluate_outputs"):  # span tasks: scores per token, post-processed per question
        return task.evaluate_outputs(*_all_scores(model, examples, task, batch_size, pad_id, device, autocast,
                                                   rank, world), example_losses=example_losses)
    indices, logits, targets = forward_all(model, examples, batch_size, pad_id, device, autocast, rank, world)
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(indices, logits, targets)])
        indices = [i for p in parts for i in p[0]]
        logits = torch.cat([p[1] for p in parts if len(p[1])])
        targets = torch.cat([p[2] for p in parts if p[2] is not None])
    loss = task.loss(_Logits(logits), {"labels": targets}).item()
    result = {"loss": round(loss, 6), **task.metrics(logits, targets)}
    if example_losses:
        per_example = task.example_losses(_Logits(logits), {"labels": targets}).tolist()
        by_index = dict(zip(indices, per_example, strict=True))
        result["example_losses"] = [round(by_index[i], 5) for i in range(len(examples))]
    return result


def _all_scores(model: Any, examples: list[dict], task: Any, batch_size: int, pad_id: int, device: Any,
                autocast: Any, rank: int, world: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Every example's extracted scores (gathered from all processes), in ``examples`` order."""
    indices, scores, _ = forward_all(model, examples, batch_size, pad_id, device, autocast, rank, world,
                                     extract=task.extract)
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(indices, scores)])
        indices = [i for p in parts for i in p[0]]
        scores = [s for p in parts for s in p[1]]
    by_index = dict(zip(indices, scores, strict=True))
    return [by_index[i] for i in range(len(examples))], examples


class _Logits:
    """Minimal stand-in for a model output, so tasks compute eval loss with their training loss."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
