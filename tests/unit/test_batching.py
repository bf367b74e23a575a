import random

from lmtune.data import collate, epoch_batches, shard


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
