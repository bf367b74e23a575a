"""What is explained, per task: the scalar outputs attributions are taken with respect to.

Classification explains a class probability; QA explains the probability of the answer's start
token and, separately, of its end token; a causal LM, the probability of the token it puts next.
Other tasks plug in here without touching the attribution or attention code. A target function returns the
targets of one input, given the model's output for it (and the tokenizer, to name tokens).
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
    predicted: str
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


def next_token_targets(task: Any, outputs: Any, label: str | None, example: Any,
                       tokenizer: Any) -> list[NextTokenProbability]:
    """The next token: the most likely one, or ``label`` (one token as the tokenizer writes it, e.g. "▁girl")."""
    best = int(outputs.logits[0, -1].argmax())
    predicted = tokenizer.convert_ids_to_tokens(best)
    if label is None:
        index = best
    elif label in tokenizer.get_vocab():
        index = tokenizer.get_vocab()[label]
    else:
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"--target: {label!r} is not a token of this model's vocabulary; give one token as the "
                          "tokenizer writes it (with its leading-space marker, e.g. ▁girl or Ġgirl)")
    return [NextTokenProbability(index, f"next token {tokenizer.convert_ids_to_tokens(index)!r}", predicted)]


def classification_targets(task: Any, outputs: Any, label: str | None, example: Any,
                           tokenizer: Any = None) -> list[ClassProbability]:
    """The class to explain: ``label`` when given, else the predicted one."""
    logits = outputs.logits
    names = [str(x) for x in task.labels]
    predicted = names[int(logits[0].argmax())]
    if label is None:
        index = int(logits[0].argmax())
    elif label in names:
        index = names.index(label)
    else:
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"--target: {label!r} is not a label of this run; labels: {', '.join(names)}")
    return [ClassProbability(index, names[index], predicted)]


def qa_targets(task: Any, outputs: Any, label: str | None, example: Any,
               tokenizer: Any = None) -> list[PositionProbability]:
    """The predicted answer's start and end tokens (best valid span in the context), each explained."""
    context = [i for i, s in enumerate(example.sequence) if s == 1]
    start_logits, end_logits = outputs.start_logits[0].float(), outputs.end_logits[0].float()
    longest = task.options["max_answer_length"]
    best = max(((s, e) for s in context for e in context if s <= e < s + longest),
               key=lambda p: float(start_logits[p[0]] + end_logits[p[1]]), default=(0, 0))
    answer = " ".join(example.tokens[best[0]: best[1] + 1]).replace(" ##", "")
    if label is not None:
        from lmtune.errors import LmtuneError

        raise LmtuneError("--target: QA explains the predicted answer's start and end; it takes no --target")
    return [PositionProbability(best[0], f"start of {answer!r}", answer, "start"),
            PositionProbability(best[1], f"end of {answer!r}", answer, "end")]


TARGETS: Registry = Registry("explainable task")
TARGETS.register("classification")(classification_targets)
TARGETS.register("qa")(qa_targets)
TARGETS.register("causal_lm")(next_token_targets)
