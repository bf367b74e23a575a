"""What is explained, per task: the scalar output an attribution is taken with respect to.

Classification explains a class probability. Other tasks plug in here (QA: a start/end position's
score; causal LM: the next token's probability) without touching the attribution or attention code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmtune.registry import Registry


@dataclass
class ClassProbability:
    """Softmax probability of one class of a sequence-classification head."""

    index: int
    name: str

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        """(batch, classes) probabilities, the function attributions differentiate."""
        return logits.float().softmax(-1)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) probability of this class."""
        return self.scores(logits)[:, self.index]


def classification_target(task: Any, logits: torch.Tensor, label: str | None) -> ClassProbability:
    """The class to explain: ``label`` when given, else the predicted one."""
    names = [str(x) for x in task.labels]
    if label is None:
        index = int(logits[0].argmax())
    elif label in names:
        index = names.index(label)
    else:
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"--target: {label!r} is not a label of this run; labels: {', '.join(names)}")
    return ClassProbability(index, names[index])


TARGETS: Registry = Registry("explainable task")
TARGETS.register("classification")(classification_target)
