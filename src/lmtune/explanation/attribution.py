"""Token attributions toward a target: Integrated Gradients (Captum), gradient × input, occlusion.

All three score the tokens of one example for the target's probability, so they can be compared
and checked with the same deletion test. Special tokens ([CLS], [SEP]) keep their place in the
arrays but are never removed, occluded or shown as words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

IG_STEPS = 50


@dataclass
class Example:
    """One tokenized input and how its tokens map back to words of the text."""

    text: str
    features: dict[str, torch.Tensor]
    """(1, seq) model inputs."""
    tokens: list[str]
    word_of: list[int | None]
    """For each token, the index of its word in ``words`` (None for special tokens)."""
    words: list[str]
    sequence: list[int | None] | None = None
    """For each token, which text it comes from: 0 the first, 1 the pair (QA's context), None special."""

    @property
    def special(self) -> list[bool]:
        return [w is None for w in self.word_of]


def encode(tokenizer: Any, text: str, max_length: int, pair: str | None = None) -> Example:
    """Tokenize one text; words are the text's own spans (original casing), grouped by the tokenizer."""
    encoded = tokenizer(text, pair, truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_tensors="pt")
    offsets = encoded.pop("offset_mapping")[0].tolist()
    sequence = encoded.sequence_ids(0)
    word_ids = encoded.word_ids(0)
    words: list[str] = []
    word_of: list[int | None] = []
    key_to_index: dict[tuple[int, int], int] = {}
    spans: dict[int, list[int]] = {}
    for position, (word, seq_id) in enumerate(zip(word_ids, sequence, strict=True)):
        if word is None:
            word_of.append(None)
            continue
        key = (seq_id, word)
        if key not in key_to_index:
            key_to_index[key] = len(words)
            words.append("")
        index = key_to_index[key]
        spans.setdefault(index, []).append(position)
        word_of.append(index)
    for index, positions in spans.items():
        source = text if sequence[positions[0]] == 0 else pair
        start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
        span = source[start:end]
        words[index] = span.strip() or span  # sentencepiece/byte-level pieces carry the space before a word
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    return Example(text, dict(encoded), tokens, word_of, words, sequence)


def word_scores(example: Example, scores: list[float]) -> list[float]:
    """Token scores summed into the example's words (a word's pieces share its attribution)."""
    totals = [0.0] * len(example.words)
    for word, score in zip(example.word_of, scores, strict=True):
        if word is not None:
            totals[word] += score
    return totals


Score = Callable[[torch.Tensor], torch.Tensor]
"""Model output → (batch,) value being explained (a class probability, a start or end position's probability)."""


def integrated_gradients(model: Any, example: Example, score: Score, baseline_id: int,
                         steps: int = IG_STEPS) -> tuple[list[float], float]:
    """Integrated Gradients over the word embeddings, from a baseline where every non-special token is
    ``baseline_id`` (the pad token). Returns (token scores, Captum's convergence delta).

    The delta is how far the scores' sum is from score(input) - score(baseline): near 0 means the
    path integral was approximated well enough (more ``steps`` otherwise).
    """
    from lmtune.extras import require

    require("captum", "--method ig: Integrated Gradients (gradxinput and occlusion work without it)")
    from captum.attr import LayerIntegratedGradients

    features = example.features
    ids = features["input_ids"]
    baseline = ids.clone()
    keep = torch.tensor(example.special)
    baseline[0, ~keep] = baseline_id
    others = {k: v for k, v in features.items() if k != "input_ids"}

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        batch = {k: v.expand(input_ids.shape[0], -1) for k, v in others.items()}
        return score(model(input_ids=input_ids, **batch))

    method = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attributions, delta = method.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=steps,
                                           return_convergence_delta=True)
    return attributions[0].sum(-1).tolist(), float(delta.abs().item())


def gradient_x_input(model: Any, example: Example, score: Score) -> list[float]:
    """Gradient of the score w.r.t. each token's word embedding, dotted with that embedding."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # frozen embeddings (a LoRA or frozen-layer run): differentiate from here
            output = output.detach().requires_grad_()
        output.retain_grad()
        captured["embeddings"] = output
        return output

    handle = model.get_input_embeddings().register_forward_hook(keep)
    try:
        with torch.enable_grad():
            value = score(model(**example.features)).sum()
            value.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    embeddings = captured["embeddings"]
    return (embeddings.grad[0] * embeddings[0]).sum(-1).tolist()


@torch.no_grad()
def occlusion(model: Any, example: Example, score: Score, replacement_id: int) -> list[float]:
    """How much the score drops when each token alone is replaced by ``replacement_id`` ([MASK])."""
    ids = example.features["input_ids"]
    positions = [i for i, special in enumerate(example.special) if not special]
    if not positions:
        return [0.0] * ids.shape[1]
    variants = ids.repeat(len(positions), 1)
    for row, position in enumerate(positions):
        variants[row, position] = replacement_id
    others = {k: v.expand(len(positions), -1) for k, v in example.features.items() if k != "input_ids"}
    original = score(model(**example.features))[0]
    occluded = score(model(input_ids=variants, **others))
    scores = [0.0] * ids.shape[1]
    for row, position in enumerate(positions):
        scores[position] = float(original - occluded[row])
    return scores


METHODS = ("ig", "gradxinput", "occlusion")


def attribute(method: str, model: Any, example: Example, score: Score, tokenizer: Any,
              steps: int = IG_STEPS) -> tuple[list[float], float | None]:
    """(token scores, convergence delta or None) by ``method``."""
    if method == "ig":
        return integrated_gradients(model, example, score, tokenizer.pad_token_id, steps)
    if method == "gradxinput":
        return gradient_x_input(model, example, score), None
    if method == "occlusion":
        replacement = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
        return occlusion(model, example, score, replacement), None
    from lmtune.errors import LmtuneError

    raise LmtuneError(f"--method: unknown attribution method {method!r}; allowed: {', '.join(METHODS)}")
