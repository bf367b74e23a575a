import random

from lmtune.data import collate, epoch_batches, shard
from lmtune.data.batching import eval_batches, token_batches


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


def test_each_epoch_covers_every_example_once_and_is_reproducible():
    lengths = _lengths()
    batches = epoch_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == epoch_batches(lengths, 32, seed=1, epoch=0)
    assert batches != epoch_batches(lengths, 32, seed=1, epoch=1)
    assert batches != epoch_batches(lengths, 32, seed=2, epoch=0)


def test_grouping_by_length_cuts_padding():
    lengths = _lengths()

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = padded(epoch_batches(lengths, 32, 0, 0, group_by_length=True))
    plain = padded(epoch_batches(lengths, 32, 0, 0, group_by_length=False))
    assert grouped < 0.7 * plain


def test_token_budget_batches_fit_the_budget_cover_every_example_and_repeat():
    lengths = _lengths()
    batches = epoch_batches(lengths, 32, seed=1, epoch=0, batch_tokens=640)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == epoch_batches(lengths, 32, seed=1, epoch=0, batch_tokens=640)
    assert batches != epoch_batches(lengths, 32, seed=1, epoch=1, batch_tokens=640)
    assert all(len(b) * max(lengths[i] for i in b) <= 640 for b in batches)
    rows = {kind: [len(b) for b in batches if kind(max(lengths[i] for i in b))]
            for kind in (lambda n: n <= 15, lambda n: n >= 45)}
    short, long = rows.values()
    assert sum(short) / len(short) > 3 * sum(long) / len(long)  # 640 tokens: ~45 rows of 14, ~12 of 50


def test_token_batches_fill_greedily_and_an_over_long_example_goes_alone():
    assert token_batches([0, 1, 2, 3, 4], [10, 8, 8, 3, 3], 24) == [[0, 1], [2, 3, 4]]
    assert token_batches([0, 1, 2], [30, 5, 5], 24) == [[0], [1, 2]]
    assert token_batches([0, 1, 2], [3, 9, 3], 18) == [[0, 1], [2]]  # the longest row sets the width


def test_evaluation_batches_are_sorted_and_sized_by_the_longest_batch_tokens():
    lengths = [40] * 10 + [10] * 100 + [4] * 3
    batches = eval_batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)
    # 8 × 40 tokens; 2 of 40 and 6 of 10 (as wide as 40); then 32 rows of up to 10 tokens (the third also
    # takes two of the 4s), and the last 4
    assert [len(b) for b in batches] == [8, 8, 32, 32, 32, 1]
    assert all(len(b) * max(lengths[i] for i in b) <= 8 * 40 for b in batches)
    assert eval_batches([], 8) == []


def test_shards_are_disjoint_and_equal_in_length():
    batches = [[i] for i in range(11)]
    parts = [shard(batches, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert not set(map(tuple, parts[0])) & set(map(tuple, parts[1]))


def test_collate_pads_dynamically_with_masks():
    batch = collate(
        [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": 1},
         {"input_ids": [8], "token_type_ids": [0], "labels": 0}],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
