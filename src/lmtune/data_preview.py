"""`lmtune data preview CONFIG`: the first training rows as the model will see them, with the tokens that carry
loss marked, so that a wrong chat template or mask is seen before any training.

Each row is encoded exactly as `lmtune train` encodes it (the task, the model's tokenizer, the chat template,
``train.max_length``); its tokens are decoded in runs, and the runs that carry loss are shown between ``⟦`` and
``⟧`` (special tokens included, so BOS and EOS are visible). A pair (preference) shows both sequences.
"""

from __future__ import annotations

from typing import Any

from lmtune.data.collate import IGNORE_INDEX
from lmtune.data.splits import load_tables
from lmtune.errors import LmtuneError
from lmtune.loader import load_config
from lmtune.models import load_tokenizer, resolve_model
from lmtune.pipeline import make_task
from lmtune.scratch import is_scratch

OPEN, CLOSE = "⟦", "⟧"


def preview(config: Any, overrides: list[str] | None = None, rows: int = 3) -> list[dict[str, Any]]:
    """The first ``rows`` training examples: where each came from, its text with loss spans marked, and counts."""
    cfg = load_config(config, overrides or [])
    if is_scratch(cfg.model):
        raise LmtuneError(f"model: {cfg.model} trains its tokenizer at the start of the run; preview the data of a "
                          "model that has one (a run directory, a model directory or a Hub id)")
    task = make_task(cfg)
    table = load_tables(cfg.data, task)["train"]
    tokenizer = load_tokenizer(resolve_model(cfg.model))
    examples = task.encode(table.head(rows), tokenizer, cfg.data, cfg.train.max_length)
    out = []
    for example in examples[:rows]:
        sequences = [("", example["input_ids"], example.get("labels"))]
        if "rejected_ids" in example:  # a preference pair: the chosen sequence, then the rejected one
            sequences = [("chosen", example["input_ids"], example["labels"]),
                         ("rejected", example["rejected_ids"], example["rejected_labels"])]
        out.append({"where": table.where(example.get("row", 0)), "sequences": [
            _marked(name, ids, labels, tokenizer) for name, ids, labels in sequences]})
    return out


def _marked(name: str, ids: list[int], labels: Any, tokenizer: Any) -> dict[str, Any]:
    """The sequence as text, its loss-carrying runs marked; a single label (classification) is shown as is."""
    if not isinstance(labels, list):
        return {"name": name, "text": tokenizer.decode(ids), "tokens": len(ids), "loss_tokens": None,
                "label": labels}
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels, strict=True):
        target = label != IGNORE_INDEX
        if runs and runs[-1][0] == target:
            runs[-1][1].append(token)
        else:
            runs.append((target, [token]))
    text = "".join(f"{OPEN}{tokenizer.decode(part)}{CLOSE}" if target else tokenizer.decode(part)
                   for target, part in runs)
    return {"name": name, "text": text, "tokens": len(ids),
            "loss_tokens": sum(label != IGNORE_INDEX for label in labels)}
