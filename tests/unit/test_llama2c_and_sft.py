"""The llama2.c import (tokenizer and weights) and SFT's response-only targets, on the real stories260K."""

from __future__ import annotations

import pytest

from lmtune.config import DataConfig
from lmtune.data.sources import Table
from lmtune.tasks.language_model import IGNORE_INDEX
from lmtune.tasks.sft import InstructionTuning
from tests.conftest import STORIES260K, TINYSTORIES, shared


def _llama2c_encode(text: str, pieces: list[tuple[str, float]]) -> list[int]:
    """llama2.c's own algorithm (run.c `encode`), written independently as the reference."""
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    tokens = []
    for char in " " + text:  # the dummy prefix space
        tokens += [vocab[char]] if char in vocab else [b + 3 for b in char.encode("utf-8")]
    while True:
        best = None
        for i in range(len(tokens) - 1):
            merged = pieces[tokens[i]][0] + pieces[tokens[i + 1]][0]
            if merged in vocab and (best is None or pieces[vocab[merged]][1] > best[0]):
                best = (pieces[vocab[merged]][1], i, vocab[merged])
        if best is None:
            return [1] + tokens
        tokens[best[1]:best[1] + 2] = [best[2]]


@pytest.fixture(scope="module")
def tokenizer(stories260k):
    from lmtune.models import load_tokenizer

    return load_tokenizer(str(stories260k / "model"))


def test_imported_tokenizer_encodes_and_decodes_as_llama2c(tokenizer):
    from lmtune.data.corpus import split_documents
    from lmtune.llama2c import read_pieces

    pieces = read_pieces(shared(STORIES260K) / "tok512.bin", 512)
    stories = split_documents(shared(TINYSTORIES).read_text(encoding="utf-8"))[0][:40]
    odd = ['Tom said: "Wow — 3½ cakes!" 😀\nThe end.', "  two  spaces\n new line"]
    for text in [*stories, *odd]:
        ids = tokenizer(text)["input_ids"]
        assert ids == _llama2c_encode(text, pieces)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Tom had a dog.").word_ids() == [None, 0, 0, 1, 2, 3, 3, 3]  # words, for explanations


def test_sft_targets_are_the_responses_only(tokenizer):
    task = InstructionTuning()
    table = Table("chat.jsonl", ["messages"], [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "A dog."}]}], [1])
    data = DataConfig(train="x", **InstructionTuning.default_columns)
    (example,) = task.encode(table, tokenizer, data, max_length=256)
    ids, labels = example["input_ids"], example["labels"]
    targets = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    eos = tokenizer.eos_token_id
    # exactly the two answers, each closed by EOS; no prompt token is a target
    answers = [part.strip() for part in tokenizer.decode(targets).split(tokenizer.eos_token)]
    assert answers == ["A cat.", "A dog.", ""]
    assert targets.count(eos) == 2 and all(label in (IGNORE_INDEX, t) for t, label in zip(ids, labels, strict=True))
    # the prompt at prediction time is exactly the context the first answer was learned in
    first_answer = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert task.prompt_ids(table.rows[0]["messages"][:2], tokenizer) == ids[:first_answer]


def test_sft_rows_without_a_response_are_refused(tokenizer):
    from lmtune.errors import DataError

    task = InstructionTuning()
    data = DataConfig(train="x", **InstructionTuning.default_columns)
    table = Table("rows.jsonl", ["instruction"], [{"instruction": "Say hi."}], [7])
    with pytest.raises(DataError, match=r"rows.jsonl:7: column 'output' is None"):
        task.learn_from_rows(table, data)
