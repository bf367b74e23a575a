"""Deterministic, length-grouped batch orders: the same (seed, epoch) always gives the same batches,
which is what lets a killed run resume mid-epoch at exactly the batch it stopped at."""

from __future__ import annotations

import random

MEGABATCH = 50
"""Batches per sorting window: long enough to cut padding, short enough to keep batches random."""


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
    batch_tokens: int | None = None,
) -> list[list[int]]:
    """Shuffled batches of example indices for one epoch.

    With ``group_by_length`` the shuffled indices are cut into windows of ``MEGABATCH`` batches,
    each window is sorted by length and split into batches, and the batch order is shuffled
    again, so that each batch holds examples of similar length (little padding) while the
    epoch stays random.

    Args:
        lengths: token count of each example.
        batch_size: examples per batch (the last batch may be smaller).
        seed: run seed; combined with ``epoch`` so that each epoch has its own order.
        epoch: 0-based epoch number.
        group_by_length: sort within windows by length.
        batch_tokens: when given, a batch holds as many examples as fit in this many padded tokens (rows ×
            its longest example) instead of ``batch_size`` examples: short sentences go in large batches,
            long ones in small batches. ``batch_size`` then only sets the sorting window's size.

    Returns:
        A list of batches, each a list of indices into ``lengths``.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    def cut(indices: list[int]) -> list[list[int]]:
        if batch_tokens is not None:
            return token_batches(indices, lengths, batch_tokens)
        return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

    if not group_by_length:
        return cut(order)
    window = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), window):
        batches += cut(sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True))
    rng.shuffle(batches)
    return batches


def token_batches(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """``indices`` cut in order into batches of at most ``budget`` padded tokens (rows × the longest row).

    An example longer than the budget makes a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        wider = max(longest, lengths[i])
        if current and wider * (len(current) + 1) > budget:
            batches.append(current)
            current, wider = [], lengths[i]
        current.append(i)
        longest = wider
    if current:
        batches.append(current)
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches for evaluation: sorted by length (least padding), no shuffling, sized by tokens.

    Each batch holds up to ``batch_size`` × the longest example's tokens: the first batch is ``batch_size``
    of the longest examples, as with fixed-size batches, and shorter examples share larger batches, so the
    peak memory of a pass is that of fixed-size batches and the short ones take fewer, fuller passes.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    if not order:
        return []
    return token_batches(order, lengths, batch_size * max(lengths[order[0]], 1))


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This process's share of the batches: every ``world_size``-th one.

    The tail is cut so that every process runs the same number of steps (a process that ran
    one more step than the others would wait forever on the gradient all-reduce).
    """
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
