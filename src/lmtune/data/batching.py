"""Deterministic, length-grouped batch orders: the same (seed, epoch) always gives the same batches,
which is what lets a killed run resume mid-epoch at exactly the batch it stopped at."""

from __future__ import annotations

import random

MEGABATCH = 50
"""Batches per sorting window: long enough to cut padding, short enough to keep batches random."""


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
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

    Returns:
        A list of batches, each a list of indices into ``lengths``.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * MEGABATCH
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches for evaluation: sorted by length (least padding), no shuffling."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This process's share of the batches: every ``world_size``-th one.

    The tail is cut so that every process runs the same number of steps (a process that ran
    one more step than the others would wait forever on the gradient all-reduce).
    """
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]
