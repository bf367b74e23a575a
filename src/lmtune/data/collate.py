"""Dynamic padding: pad each batch only to its own longest example."""

from __future__ import annotations

from typing import Any

import torch


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack tokenized examples into padded tensors.

    Args:
        examples: dicts with ``input_ids`` (list[int]), optionally ``token_type_ids`` and
            ``labels`` (an int).
        pad_id: the tokenizer's padding id.

    Returns:
        ``input_ids`` and ``attention_mask`` (batch, seq); ``token_type_ids`` if present;
        the TARGETS present (``labels``; ``start_positions``/``end_positions``), (batch,) each. Other
        example fields (e.g. QA offsets) stay out of the batch.
    """
    longest = max(len(ex["input_ids"]) for ex in examples)
    ids, mask = pad_batch([ex["input_ids"] for ex in examples], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in examples[0]:
        batch["token_type_ids"] = _pad([ex["token_type_ids"] for ex in examples], 0)
    if "hidden" in examples[0]:  # cached frozen-layer outputs, (len, hidden) each
        hidden = torch.zeros((len(examples), longest, examples[0]["hidden"].shape[-1]), dtype=torch.float32)
        for row, ex in enumerate(examples):
            hidden[row, : len(ex["input_ids"])] = ex["hidden"]
        batch["hidden"] = hidden
    if "decoder_input_ids" in examples[0]:  # encoder-decoder targets, padded on their own
        batch["decoder_input_ids"] = _pad([ex["decoder_input_ids"] for ex in examples], pad_id)
        batch["decoder_attention_mask"] = _pad([[1] * len(ex["decoder_input_ids"]) for ex in examples], 0)
    for key in TARGETS:
        if key in examples[0]:
            values = [ex[key] for ex in examples]
            # token-level targets (generation tasks) are padded with the loss's ignore index
            batch[key] = _pad(values, IGNORE_INDEX) if isinstance(values[0], list) else torch.tensor(values)
    return batch


IGNORE_INDEX = -100
"""Target value that no loss counts (prompt tokens, padding, unmasked positions); PyTorch's default."""


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    return pad_batch(rows, value)[0]


def pad_batch(rows: list[list[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (rows, longest): ``rows`` padded with ``value`` on the right (or the left,
    for decoder-only generation, so that every row ends where the new tokens start)."""
    longest = max(map(len, rows))
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        out[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return out, mask


TARGETS = ("labels", "start_positions", "end_positions")
"""Target fields of a batch: the loss reads them, the model's forward does not get them."""


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes: the batch without its targets."""
    return {k: v for k, v in batch.items() if k not in TARGETS}
