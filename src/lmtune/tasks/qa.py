"""Extractive question answering (SQuAD style) on a span head: start and end scores per token.

A question whose context is longer than ``max_length`` becomes several features (windows of the
context overlapping by ``doc_stride`` tokens). Training marks the answer's first and last token in
each window, or [CLS] when the window does not contain it. Prediction takes, over all windows of a
question, the best-scoring (start, end) pair among the n-best starts and ends, no longer than
``max_answer_length`` tokens, and maps it back to characters of the original context.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.data.collate import model_inputs
from lmtune.errors import DataError, LmtuneError
from lmtune.tasks.base import LOSS, TASKS, Capabilities, Metric, Scoring, Task
from lmtune.tasks.explained import PositionProbability
from lmtune.tasks.squad_metric import squad_scores

DEFAULTS = {"doc_stride": 128, "max_answer_length": 30, "n_best": 20, "allow_no_answer": False}


@TASKS.register("qa")
class QuestionAnswering(Task):
    name = "qa"
    primary_metric = "f1"
    # the official SQuAD scores are percentages; one question of a few hundred moves EM by 0.2-0.5
    metrics = (LOSS, Metric("exact_match", True, "percent", 0.5), Metric("f1", True, "percent", 0.5))
    capabilities = Capabilities(explains=True)
    default_columns = {"text": "question", "text_pair": "context", "label": "answers"}
    input_fields = ("question", "context")
    """Columns when the config names none: the SQuAD / Hugging Face ``squad`` layout."""

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = {**DEFAULTS, **(options or {})}

    @classmethod
    def from_state(cls, state: dict[str, Any], cfg: Any = None) -> QuestionAnswering:
        return cls(state.get("options"))

    def state(self) -> dict[str, Any]:
        return {"options": self.options}

    def explanation_targets(self, outputs: Any, label: str | None, example: Any,
                            tokenizer: Any) -> list[PositionProbability]:
        """The predicted answer's start and end tokens (best valid span in the context), each explained."""
        if label is not None:
            raise LmtuneError("--target: QA explains the predicted answer's start and end; it takes no --target")
        context = [i for i, s in enumerate(example.sequence) if s == 1]
        start_logits, end_logits = outputs.start_logits[0].float(), outputs.end_logits[0].float()
        longest = self.options["max_answer_length"]
        best = max(((s, e) for s in context for e in context if s <= e < s + longest),
                   key=lambda p: float(start_logits[p[0]] + end_logits[p[1]]), default=(0, 0))
        answer = " ".join(example.tokens[best[0]: best[1] + 1]).replace(" ##", "")
        return [PositionProbability(best[0], f"start of {answer!r}", answer, "start"),
                PositionProbability(best[1], f"end of {answer!r}", answer, "end")]

    def configure(self, cfg: Any) -> None:
        """Take the run config's QA settings (saved with the run in task.json)."""
        self.options.update(doc_stride=cfg.data.doc_stride, max_answer_length=cfg.qa.max_answer_length,
                            n_best=cfg.qa.n_best, allow_no_answer=cfg.qa.allow_no_answer)

    def learn_from_rows(self, train: Table, data: DataConfig) -> None:
        train.require(data.text, data.text_pair, data.label)
        for i in range(len(train)):
            _answers(train, i, data)  # every answer is checked against its context before training starts

    # ---- features ---------------------------------------------------------------------------------

    def encode(self, table: Table, tokenizer: Any, data: DataConfig, max_length: int) -> list[dict]:
        table.require(data.text, data.text_pair)
        questions = [q.lstrip() for q in table.texts(data.text)]  # leading spaces only waste window room
        contexts = table.texts(data.text_pair)
        stride = min(self.options["doc_stride"], max_length // 2)
        encoded = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
        labelled = data.label in table.columns
        features = []
        for f, row in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence = encoded.sequence_ids(f)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][f], sequence,
                                                                      strict=True)]
            feature = {"input_ids": encoded["input_ids"][f], "example": row, "offsets": offsets,
                       "context": contexts[row]}
            if "token_type_ids" in encoded:
                feature["token_type_ids"] = encoded["token_type_ids"][f]
            if labelled:
                answers = _answers(table, row, data)
                feature["answers"] = [a for a, _ in answers]
                feature["start_positions"], feature["end_positions"] = _span(offsets, answers)
            features.append(feature)
        return features

    def build_model(self, source: str | Path, **kwargs: Any) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        from lmtune.models import pretrained

        return pretrained(AutoModelForQuestionAnswering.from_pretrained, source, **kwargs)

    # ---- training ---------------------------------------------------------------------------------

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean over features of the mean of the start and end cross-entropies."""
        start = F.cross_entropy(outputs.start_logits.float(), batch["start_positions"], label_smoothing=label_smoothing)
        end = F.cross_entropy(outputs.end_logits.float(), batch["end_positions"], label_smoothing=label_smoothing)
        return (start + end) / 2

    # ---- evaluation and prediction -----------------------------------------------------------------

    def score_batch(self, model: Any, batch: dict[str, torch.Tensor], examples: list[dict], indices: list[int],
                    scoring: Scoring) -> list[torch.Tensor]:
        """Each feature's start and end scores, (its length, 2) in fp32."""
        out = model(**model_inputs(batch))
        scores = torch.stack([out.start_logits, out.end_logits], -1).float().cpu()
        return [scores[row, : len(example["input_ids"])] for row, example in enumerate(examples)]

    def aggregate(self, scores: list[torch.Tensor], features: list[dict],
                  example_losses: bool = False) -> dict[str, Any]:
        """Loss over features, then EM/F1 over the questions (each question's windows combined)."""
        losses = torch.stack([self._feature_loss(s, f) for s, f in zip(scores, features, strict=True)])
        answers = self.answers(scores, features)
        order = sorted(answers)
        result: dict[str, Any] = {"loss": round(float(losses.mean()), 6)}
        result.update(squad_scores([answers[q]["answer"] for q in order], [answers[q]["references"] for q in order]))
        if example_losses:
            result["example_losses"] = [round(float(x), 5) for x in losses]
        return result

    def _feature_loss(self, scores: torch.Tensor, feature: dict) -> torch.Tensor:
        start = F.cross_entropy(scores[:, 0].float()[None], torch.tensor([feature["start_positions"]]))
        end = F.cross_entropy(scores[:, 1].float()[None], torch.tensor([feature["end_positions"]]))
        return (start + end) / 2

    def answers(self, scores: list[torch.Tensor], features: list[dict]) -> dict[int, dict[str, Any]]:
        """The best answer of each question (keyed by its row), from all of its windows."""
        best: dict[int, dict[str, Any]] = {}
        null: dict[int, float] = {}
        for score, feature in zip(scores, features, strict=True):
            row = feature["example"]
            start, end = score[:, 0].float(), score[:, 1].float()
            null[row] = min(null.get(row, math.inf), float(start[0] + end[0]))
            for candidate in self._candidates(start, end, feature):
                if row not in best or candidate["logit"] > best[row]["logit"]:
                    best[row] = candidate
            best.setdefault(row, {"answer": "", "start": 0, "end": 0, "logit": -math.inf, "score": 0.0})
            best[row]["references"] = feature.get("answers", [])
        for row, answer in best.items():
            if self.options["allow_no_answer"] and null[row] > answer["logit"]:
                answer.update(answer="", start=0, end=0, logit=null[row])
        return best

    def _candidates(self, start: torch.Tensor, end: torch.Tensor, feature: dict) -> list[dict[str, Any]]:
        """Valid (start, end) pairs among the n-best of each, as character spans of the context."""
        offsets = feature["offsets"]
        n = min(self.options["n_best"], len(offsets))
        starts, ends = start.topk(n).indices.tolist(), end.topk(n).indices.tolist()
        found = []
        for s in starts:
            for e in ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > self.options["max_answer_length"]:
                    continue
                first, last = offsets[s][0], offsets[e][1]
                found.append({"answer": feature["context"][first:last], "start": first, "end": last,
                              "logit": float(start[s] + end[e])})
        if found:
            logits = torch.tensor([c["logit"] for c in found])
            for candidate, p in zip(found, logits.softmax(0).tolist(), strict=True):
                candidate["score"] = p  # probability among this window's candidates
        return found

    def predictions(self, scores: list[torch.Tensor], features: list[dict], rows: int) -> list[dict[str, Any]]:
        """One prediction per input row: answer text, character span in the context, score."""
        best = self.answers(scores, features)
        out = []
        for row in range(rows):
            answer = best.get(row, {"answer": "", "start": 0, "end": 0, "score": 0.0})
            out.append({"answer": answer["answer"], "start": answer["start"], "end": answer["end"],
                        "score": round(answer["score"], 6)})
        return out


def _answers(table: Table, index: int, data: DataConfig) -> list[tuple[str, int]]:
    """(text, start character) of each reference answer of row ``index``, checked against its context."""
    row = table.rows[index]
    value = row.get(data.label)
    context = row.get(data.text_pair)
    if not isinstance(context, str):
        raise DataError(f"{table.where(index)}: column {data.text_pair!r} is {context!r}; expected the context text")
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
    elif isinstance(value, list):  # the original SQuAD JSON: [{"text": ..., "answer_start": ...}, ...]
        texts = [a.get("text") if isinstance(a, dict) else None for a in value]
        starts = [a.get("answer_start") if isinstance(a, dict) else None for a in value]
    else:
        texts = starts = None
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{table.where(index)}: column {data.label!r} must be "
                        '{"text": [...], "answer_start": [...]} of equal lengths')
    answers = []
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not isinstance(start, int) or context[start:start + len(text)] != text:
            raise DataError(f"{table.where(index)}: answer {text!r} is not at character {start!r} of the context")
        answers.append((text, start))
    return answers


def _span(offsets: list[tuple[int, int] | None], answers: list[tuple[str, int]]) -> tuple[int, int]:
    """Token positions of the first answer inside this window, or (0, 0) ([CLS]) when it is not all there."""
    if not answers:
        return 0, 0
    text, first = answers[0]
    last = first + len(text)
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
        return 0, 0
    start = next(i for i in inside if offsets[i][1] > first)
    end = next(i for i in reversed(inside) if offsets[i][0] < last)
    return start, end
