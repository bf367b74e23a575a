"""What `lmtune explain` attributes, as scalar outputs of a model: each task's `Task.explanation_targets` returns
these for one input (a class probability, QA's answer start and end, a causal LM's next token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ClassProbability:
    """Softmax probability of one class of a sequence-classification head."""

    index: int
    name: str | int
    """What is explained: the class as the task reads and predicts it (an integer label stays one)."""
    predicted: str | int
    deletable: bool = True
    """Whether the deletion test applies (deleting tokens does not move what is explained)."""

    def score(self, outputs: Any) -> torch.Tensor:
        """(batch,) probability of this class."""
        return outputs.logits.float().softmax(-1)[:, self.index]


@dataclass
class PositionProbability:
    """Softmax probability that the answer starts (or ends) at one token: QA's span head."""

    index: int
    name: str
    predicted: str
    which: str = "start"
    deletable: bool = False  # deleting tokens shifts the position, so the deletion test does not apply

    def score(self, outputs: Any) -> torch.Tensor:
        logits = outputs.start_logits if self.which == "start" else outputs.end_logits
        return logits.float().softmax(-1)[:, self.index]


class NextTokenProbability(ClassProbability):
    """A causal LM's probability of one token (its "class") coming next, after the whole input."""

    def score(self, outputs: Any) -> torch.Tensor:
        return outputs.logits[:, -1].float().softmax(-1)[:, self.index]


ExplanationTarget = ClassProbability | PositionProbability
