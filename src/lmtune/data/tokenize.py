"""Tokenize once, cache on disk: re-runs, resumed runs and strategy comparisons skip tokenization."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from lmtune.data.sources import Table


def cache_dir() -> Path:
    """``$LMTUNE_CACHE`` or ``~/.cache/lmtune``."""
    return Path(os.environ.get("LMTUNE_CACHE", Path.home() / ".cache" / "lmtune"))


def tokenize_table(
    table: Table, tokenizer: Any, text: str, text_pair: str | None, max_length: int
) -> dict[str, list[list[int]]]:
    """Token ids (and type ids) of each row, read from the cache when this exact job was done before.

    The cache key covers the source (path, size, mtime), the rows used, the tokenizer and the
    settings, so any change re-tokenizes.
    """
    key = _cache_key(table, tokenizer, text, text_pair, max_length)
    path = cache_dir() / "tokenized" / f"{key}.pkl"
    if path.is_file():
        cached = _read_cached(path)
        if isinstance(cached, dict) and len(cached.get("input_ids", ())) == len(table):
            return cached
        # a damaged cache entry is rebuilt below
    firsts = table.texts(text)
    seconds = table.texts(text_pair) if text_pair else None
    encoded = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    result = {"input_ids": encoded["input_ids"]}
    if "token_type_ids" in encoded:
        result["token_type_ids"] = encoded["token_type_ids"]
    _write_atomic(path, result)
    return result


def _read_cached(path: Path) -> Any:
    """The cached value, or None when the entry cannot be read (unpickling damaged bytes raises almost any
    exception type, and a cache must never fail a run)."""
    try:
        with path.open("rb") as handle:
            return pickle.load(handle)
    except Exception:  # noqa: BLE001
        return None


def _cache_key(table: Table, tokenizer: Any, text: str, text_pair: str | None, max_length: int) -> str:
    source = Path(table.source)
    stat = source.stat() if source.is_file() else None
    parts = {
        "source": str(source.resolve()) if stat else table.source,
        "size": stat.st_size if stat else None,
        "mtime": stat.st_mtime_ns if stat else None,
        "rows": len(table),
        "lines": hashlib.sha1(str(table.lines).encode()).hexdigest(),
        "tokenizer": [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)],
        "columns": [text, text_pair],
        "max_length": max_length,
    }
    if not stat:  # no file to fingerprint (Hub data): hash the text itself
        parts["content"] = hashlib.sha1(json.dumps(table.rows, default=str).encode()).hexdigest()
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _write_atomic(path: Path, value: Any) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        # caching is an optimisation: an unwritable cache must not fail the run, nor leave a partial file
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
