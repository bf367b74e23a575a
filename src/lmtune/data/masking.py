"""Masked-LM inputs (BERT's recipe): choose a fraction of the tokens, or of the words with whole-word
masking; the model must restore them. A chosen token becomes [MASK] 80% of the time, a random token
10%, and stays as it is 10%.

The choice is seeded by (seed, epoch, example), so each epoch masks afresh and the masks do not depend on
batch order, the number of processes, or where a run resumed.
"""

from __future__ import annotations

import random
from typing import Any

from lmtune.data.collate import IGNORE_INDEX


def mask_example(example: dict[str, Any], rng: random.Random, probability: float, whole_word: bool,
                 mask_id: int, vocab_size: int, special_ids: set[int]) -> dict[str, Any]:
    """A masked copy of ``example`` (which holds the original ``tokens`` and their ``words``)."""
    tokens, words = example["tokens"], example["words"]
    if whole_word:  # every piece of a chosen word is masked with it
        groups: dict[int, list[int]] = {}
        for position, word in enumerate(words):
            if word is not None:
                groups.setdefault(word, []).append(position)
        units = list(groups.values())
    else:
        units = [[position] for position, word in enumerate(words) if word is not None]
    chosen = rng.sample(units, max(1, round(probability * len(units)))) if units else []
    ids, labels = list(tokens), [IGNORE_INDEX] * len(tokens)
    for unit in chosen:
        for position in unit:
            labels[position] = tokens[position]
            roll = rng.random()
            if roll < 0.8:
                ids[position] = mask_id
            elif roll < 0.9:
                replacement = rng.randrange(vocab_size)
                while replacement in special_ids:
                    replacement = rng.randrange(vocab_size)
                ids[position] = replacement
    return {**example, "input_ids": ids, "labels": labels}


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"mask:{seed}:{epoch}:{index}")
