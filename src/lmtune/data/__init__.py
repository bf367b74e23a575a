"""Datasets → batches: readers, cached tokenization, length-grouped batching, collation."""

from lmtune.data.batching import epoch_batches, shard
from lmtune.data.collate import collate
from lmtune.data.sources import Table, read_stdin, read_table

__all__ = ["Table", "collate", "epoch_batches", "read_stdin", "read_table", "shard"]
