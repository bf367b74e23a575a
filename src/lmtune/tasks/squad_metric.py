"""The official SQuAD v1.1 exact match and F1, with its answer normalisation, over several references.

Follows the definitions of the official evaluation script: lower-case, strip punctuation, drop the
articles a/an/the, collapse whitespace; EM and F1 of a prediction are the maxima over its references.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(predicted) & Counter(expected)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 in percent, each the best over a question's references.

    A question with no reference (SQuAD 2.0 style unanswerable) counts as right only for an empty prediction.
    """
    em_total = f1_total = 0.0
    for prediction, refs in zip(predictions, references, strict=True):
        refs = refs or [""]
        em_total += max(exact_match(prediction, r) for r in refs)
        f1_total += max(f1(prediction, r) if r else float(not normalize_answer(prediction)) for r in refs)
    n = max(len(predictions), 1)
    return {"exact_match": round(100 * em_total / n, 4), "f1": round(100 * f1_total / n, 4)}
