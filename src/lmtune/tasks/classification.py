"""Text classification (binary, multi-class, sentence pairs) on a sequence-classification head."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.collate import model_inputs
from lmtune.data.tokenize import tokenize_table
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import LOSS, TASKS, Capabilities, Metric, Scoring, Task
from lmtune.tasks.explained import ClassProbability

_INT = re.compile(r"^[+-]?\d+$")


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    primary_metric = "accuracy"
    metrics = (LOSS, Metric("accuracy", True, "fraction", 0.005, majority_baseline=True),
               Metric("macro_f1", True, "fraction", 0.005))
    # word-level text edits keep the label (an assumption of augmentation, true for most text classes)
    capabilities = Capabilities(class_labels=True, augmentable=True, rdrop=True, explains=True)
    input_fields = ("text", "text_pair")

    def __init__(self, labels: list[str | int] | None = None):
        self.labels: list[str | int] = list(labels or [])

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any = None) -> Classification:
        return cls(state["labels"])

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def label_names(self) -> list[str]:
        return [str(label) for label in self.labels]

    def explanation_targets(self, outputs: Any, label: str | None, example: Any,
                            tokenizer: Any) -> list[ClassProbability]:
        """The class to explain: ``label`` (a name as typed) when given, else the predicted one; both are labels as
        `predictions` gives them (1, not "1")."""
        names = self.label_names()
        best = int(outputs.logits[0].argmax())
        if label is None:
            index = best
        elif label in names:
            index = names.index(label)
        else:
            raise LmtuneError(f"--target: {label!r} is not a label of this run; labels: {', '.join(names)}")
        return [ClassProbability(index, self.labels[index], self.labels[best])]

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
        train.require(data.text, data.text_pair, data.label)
        values = {_normalize(row.get(data.label), train, i, data.label) for i, row in enumerate(train.rows)}
        if len(values) < 2:
            raise DataError(
                f"{train.source}: label column {data.label!r} has only one class ({next(iter(values))!r}); "
                "classification needs at least two"
            )
        self.labels = sorted(values, key=lambda v: (isinstance(v, str), v))

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        table.require(data.text, data.text_pair)
        tokens = tokenize_table(table, tokenizer, data.text, data.text_pair, max_length)
        examples = [{key: tokens[key][i] for key in tokens} for i in range(len(table))]
        if data.label in table.columns:
            index = {label: i for i, label in enumerate(self.labels)}
            for i, row in enumerate(table.rows):
                value = _normalize(row.get(data.label), table, i, data.label)
                if value not in index:
                    allowed = ", ".join(map(str, self.labels))
                    raise DataError(f"{table.where(i)}: label {value!r} is not one of the training labels ({allowed})")
                examples[i]["labels"] = index[value]
        return examples

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from lmtune.models import pretrained

        names = [str(label) for label in self.labels]
        return pretrained(
            AutoModelForSequenceClassification.from_pretrained, source,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,  # a run directory's head may have a different label set
            **kwargs,
        )

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), batch["labels"], label_smoothing=label_smoothing)

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[torch.Tensor]:
        """Each example's logits, (classes,) in fp32."""
        return list(model(**model_inputs(batch)).logits.float().cpu())

    def aggregate(self, records: list[torch.Tensor], examples: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        logits = torch.stack(records)
        targets = torch.tensor([ex["labels"] for ex in examples])
        losses = F.cross_entropy(logits, targets, reduction="none")
        result = {"loss": round(losses.mean().item(), 6),
                  **classification_metrics(logits.argmax(-1), targets, [str(label) for label in self.labels])}
        if example_losses:
            result["example_losses"] = [round(x, 5) for x in losses.tolist()]
        return result

    def gold(self, example: dict) -> str | int:
        return self.labels[example["labels"]]

    def predictions(self, records: list[torch.Tensor], examples: list[dict], rows: int) -> list[dict[str, Any]]:
        probs = torch.stack(records).softmax(-1)
        results = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            scores = {str(label): round(p, 6) for label, p in zip(self.labels, row, strict=True)}
            results.append({"label": self.labels[best], "score": round(row[best], 6), "scores": scores})
        return results


def classification_metrics(predicted: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``confusion[i][j]`` counts examples of true class i predicted as class j.
    """
    k = len(names)
    confusion = torch.zeros((k, k), dtype=torch.long)
    ones = torch.ones_like(targets, dtype=torch.long)
    confusion.index_put_((targets.long(), predicted.long()), ones, accumulate=True)
    tp = confusion.diag().double()
    predicted_count = confusion.sum(0).double()
    true_count = confusion.sum(1).double()
    precision = torch.where(predicted_count > 0, tp / predicted_count.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true_count > 0, tp / true_count.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    per_class = {
        name: {
            "precision": round(precision[i].item(), 6),
            "recall": round(recall[i].item(), 6),
            "f1": round(f1[i].item(), 6),
            "support": int(true_count[i].item()),
        }
        for i, name in enumerate(names)
    }
    total = int(confusion.sum().item())
    return {
        "accuracy": round(tp.sum().item() / max(total, 1), 6),
        "macro_f1": round(f1.mean().item(), 6),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": names,
    }


def _normalize(value: Any, table: Table, index: int, column: str) -> str | int:
    """Labels as written: integers (also "1" from CSV) stay integers, other text stays text."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise DataError(f"{table.where(index)}: label column {column!r} is {value!r}; expected a class name or integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(f"{table.where(index)}: label {value!r} is not a class; expected a class name or integer")
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise DataError(f"{table.where(index)}: empty label in column {column!r}")
        return int(value) if _INT.match(value) else value
    return value
