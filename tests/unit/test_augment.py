"""Seeded on-the-fly augmentation: each edit, reproducibility, masked-LM replacement."""

from __future__ import annotations

import pytest

from lmtune.config import AugmentationConfig
from lmtune.data.augment import Augmenter, load_filler
from lmtune.errors import LmtuneError
from tests.conftest import make_tiny_bert

CORPUS = ["a gripping and moving film", "the plot is dull and the acting is flat", "an utter delight"]
TEXT = "the plot is dull and the acting is flat"


def _augmenter(methods, rate=0.2, probability=1.0, seed=0, filler=None):
    cfg = AugmentationConfig(methods=tuple(methods), rate=rate, probability=probability)
    return Augmenter(cfg, seed, CORPUS, filler)


def test_delete_swap_and_insert_edit_as_described():
    words = TEXT.split()
    deleted = _augmenter(["delete"]).augment([TEXT], 0, [0])[0].split()
    assert len(deleted) == len(words) - 2 and all(w in words for w in deleted)
    swapped = _augmenter(["swap"]).augment([TEXT], 0, [0])[0].split()
    assert sorted(swapped) == sorted(words) and swapped != words
    inserted = _augmenter(["insert"]).augment([TEXT], 0, [0])[0].split()
    vocabulary = {w for t in CORPUS for w in t.split()}
    assert len(inserted) == len(words) + 2 and set(inserted) <= vocabulary


def test_edits_are_seeded_per_epoch_and_example_not_per_batch():
    aug = _augmenter(["delete", "swap", "insert"])
    texts = [TEXT] * 8
    first = aug.augment(texts, 0, list(range(8)))
    assert aug.augment(texts, 0, list(range(8))) == first  # reproducible (resume sees the same)
    assert aug.augment(texts[3:5], 0, [3, 4]) == first[3:5]  # independent of the batch it is in
    assert aug.augment(texts, 1, list(range(8))) != first  # a new epoch, new edits
    assert _augmenter(["delete", "swap", "insert"], seed=1).augment(texts, 0, list(range(8))) != first


def test_probability_leaves_some_examples_as_written():
    out = _augmenter(["delete"], probability=0.5).augment([TEXT] * 200, 0, list(range(200)))
    unchanged = sum(text == TEXT for text in out)
    assert 60 < unchanged < 140


def test_single_words_survive_deletion():
    assert _augmenter(["delete"], rate=1.0).augment(["word"], 0, [0]) == ["word"]


def test_mlm_replacement_proposes_whole_vocabulary_words(tmp_path):
    filler = load_filler(make_tiny_bert(tmp_path / "mlm", masked_lm=True))
    aug = _augmenter(["mlm"], rate=0.3, filler=filler)
    out = aug.augment([TEXT, "an utter delight"], 0, [0, 1])
    assert out == aug.augment([TEXT, "an utter delight"], 0, [0, 1])
    words, new = TEXT.split(), out[0].split()
    assert len(new) == len(words)
    changed = [(a, b) for a, b in zip(words, new, strict=True) if a != b]
    assert len(changed) == 3
    vocab = filler.tokenizer.get_vocab()
    assert all(b in vocab and b.isalpha() for _, b in changed)


def test_an_encoder_without_a_masked_lm_head_is_refused():
    with pytest.raises(LmtuneError, match="no trained masked-LM head"):
        load_filler("bundled:minilm")
