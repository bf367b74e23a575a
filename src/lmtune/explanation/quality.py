"""Checks that an explanation means something, computed rather than assumed.

- Deletion test: delete the tokens an attribution ranks highest and watch the target probability;
  it must fall faster than when deleting random tokens (lower area under the curve).
- Randomization check (Adebayo et al., 2018): the attributions of the same architecture with
  re-initialised weights must differ from the trained model's (low rank correlation); if they do
  not, the method shows the input, not what the model learned.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import torch

from lmtune.explanation.attribution import Example, Score

DELETION_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Share of the (non-special) tokens deleted at each point of a deletion curve."""
RANDOM_ORDERS = 5
RANDOMIZATION_PASS = 0.5
"""A rank correlation below this between trained and randomized attributions passes the check."""


@torch.no_grad()
def deletion_curve(model: Any, example: Example, score: Score, order: list[int],
                   fractions: tuple[float, ...] = DELETION_FRACTIONS) -> list[float]:
    """Target probability after deleting the first ceil(f * n) tokens of ``order``, for each fraction f."""
    ids = example.features["input_ids"][0]
    candidates = len(order)
    variants = []
    for fraction in fractions:
        gone = set(order[: math.ceil(fraction * candidates)])
        variants.append([i for i in range(len(ids)) if i not in gone])
    values = []
    for keep in variants:  # one forward each: deleted tokens change the length, so no padding games
        index = torch.tensor(keep)
        features = {k: v[:, index] for k, v in example.features.items()}
        values.append(float(score(model(**features))[0]))
    return values


def deletion_test(model: Any, example: Example, score: Score, scores: list[float],
                  seed: int = 0) -> dict[str, Any]:
    """Deletion curves by attribution rank and by random order (mean of RANDOM_ORDERS), with their areas."""
    candidates = [i for i, special in enumerate(example.special) if not special]
    ranked = sorted(candidates, key=lambda i: -scores[i])
    by_attribution = deletion_curve(model, example, score, ranked)
    rng = random.Random(seed)
    random_curves = []
    for _ in range(RANDOM_ORDERS):
        order = list(candidates)
        rng.shuffle(order)
        random_curves.append(deletion_curve(model, example, score, order))
    by_random = [sum(c[k] for c in random_curves) / RANDOM_ORDERS for k in range(len(DELETION_FRACTIONS))]
    return {"fractions": list(DELETION_FRACTIONS), "attribution": by_attribution, "random": by_random,
            "area_attribution": _area(by_attribution), "area_random": _area(by_random),
            "beats_random": _area(by_attribution) < _area(by_random)}


def _area(curve: list[float]) -> float:
    """Mean of the curve over its (evenly spaced) points: lower means the probability fell faster."""
    return sum(curve) / len(curve)


def randomized_copy(model: Any, seed: int = 0) -> Any:
    """The same architecture with every weight re-initialised (a model that learned nothing)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and module is not clone:
                module.reset_parameters()
    return clone.eval()


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two score lists (ties get their mean rank)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa > 0 and sb > 0 else 0.0


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks
