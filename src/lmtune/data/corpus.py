"""Language-model corpora: documents from text files or tables, packed into fixed-length token blocks.

A plain ``.txt`` file holds documents separated by a line ``<|endoftext|>`` (TinyStories) or, when it
has none, by blank lines; a file with neither is one document per line (WikiText). A table holds one
document per row, in its text column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmtune.data.collate import IGNORE_INDEX, SEGMENTS
from lmtune.data.sources import Table, _decode, read_table
from lmtune.errors import DataError

DOCUMENT_SEPARATOR = "<|endoftext|>"
_BLANK = re.compile(r"\n\s*\n")


def read_corpus(spec: str, split: str = "train") -> Table:
    """Documents of a corpus as a one-column table (``text``), each with the line it starts on."""
    path = Path(spec)
    if path.suffix.lower() != ".txt":
        return read_table(spec, split)
    if not path.is_file():
        raise DataError(f"{spec}: file not found")
    text = _decode(path.read_bytes(), spec).replace("\r\n", "\n")
    documents, lines = split_documents(text)
    if not documents:
        raise DataError(f"{spec}: empty file; expected text (documents separated by {DOCUMENT_SEPARATOR} "
                        "lines or blank lines)")
    return Table(spec, ["text"], [{"text": d} for d in documents], lines)


def split_documents(text: str) -> tuple[list[str], list[int]]:
    """(documents, the 1-based line each starts on) of a plain-text corpus."""
    if any(line.strip() == DOCUMENT_SEPARATOR for line in text.split("\n")):
        pattern = re.compile(r"^[ \t]*" + re.escape(DOCUMENT_SEPARATOR) + r"[ \t]*$", re.MULTILINE)
    elif _BLANK.search(text.strip()):
        pattern = _BLANK
    else:
        pattern = re.compile(r"\n")
    documents, lines, position = [], [], 0
    for match in [*pattern.finditer(text), None]:
        end = match.start() if match else len(text)
        chunk = text[position:end]
        if chunk.strip():
            leading = len(chunk) - len(chunk.lstrip())
            lines.append(text.count("\n", 0, position + leading) + 1)
            documents.append(chunk.strip())
        position = match.end() if match else len(text)
    return documents, lines


def document_ids(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each document, marked as a document: BOS in front when the tokenizer has one
    (Llama, lmtune's own BPE), else EOS behind (GPT-2 style)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None:
        return [[bos, *doc] for doc in ids]
    if eos is not None:
        return [[*doc, eos] for doc in ids]
    return ids


def document_windows(documents: list[list[int]], max_length: int) -> list[dict[str, Any]]:
    """Evaluation examples: each document on its own, cut into windows of at most ``max_length`` tokens.

    No window mixes two documents, so each token is scored given only the text before it in its own
    document (a document longer than the window loses the context before each cut).
    """
    return [{"input_ids": doc[start:start + max_length], "labels": doc[start:start + max_length], "row": row}
            for row, doc in enumerate(documents) for start in range(0, len(doc), max_length)
            if len(doc[start:start + max_length]) >= 2]


def pack(examples: list[dict[str, Any]], block_size: int, isolate: bool = False) -> list[dict[str, Any]]:
    """Training blocks: all examples' tokens concatenated and cut into blocks of ``block_size``, no padding.

    The last, shorter block is kept (so no token is dropped); each block records the row of the first
    document it holds (``row``). ``isolate``: each example's tokens in a block are marked as its own segment
    (`lmtune.data.collate.packed_attention`: they attend only to each other, positions restart) and the first
    token of each is not predicted from the one before it, which belongs to another example; else a block is one
    stream in which a document sees the ones before it.
    """
    blocks: list[dict[str, Any]] = []
    stream: list[int] = []
    owner: list[int] = []  # the example each token of the stream comes from
    rows: list[tuple[int, int]] = []  # (stream position where a row starts, row)
    for number, example in enumerate(examples):
        if not rows or rows[-1][1] != example["row"]:
            rows.append((len(stream), example["row"]))
        stream.extend(example["input_ids"])
        owner.extend([number] * len(example["input_ids"]))
    current = 0
    for start in range(0, len(stream), block_size):
        block = stream[start:start + block_size]
        if len(block) < 2:
            break
        while current + 1 < len(rows) and rows[current + 1][0] <= start:
            current += 1
        blocks.append({"input_ids": block, "labels": block, "row": rows[current][1]})
        if isolate:
            segments = owner[start:start + block_size]
            first = segments[0]
            blocks[-1][SEGMENTS] = [s - first for s in segments]
            blocks[-1]["labels"] = [IGNORE_INDEX if i and segments[i] != segments[i - 1] else token
                                    for i, token in enumerate(block)]
    return blocks
