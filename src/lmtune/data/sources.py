"""Read tabular data (CSV, TSV, JSONL, Parquet, plain text, Hub datasets) into rows.

Every error names the file and, where it has one, the line, and says what was expected.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


@dataclass
class Table:
    """Rows read from one source, with their line numbers for error messages."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int] = field(default_factory=list)
    """Line number in the file of each row (empty for sources without lines)."""

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        """``file:line N`` (or ``file: row N``) for row ``index``, for error messages."""
        if self.lines:
            return f"{self.source}:{self.lines[index]}"
        return f"{self.source}: row {index + 1}"

    def require(self, *names: str | None) -> None:
        """Raise a DataError naming the first missing column and those that exist."""
        for name in names:
            if name is not None and name not in self.columns:
                raise DataError(
                    f"{self.source}: no column {name!r}; the file has columns {', '.join(map(repr, self.columns))} "
                    "(set data.text / data.text_pair / data.label to the right names)"
                )

    def texts(self, name: str) -> list[str]:
        """Column ``name`` as strings; a missing or non-string value is an error naming its row."""
        values = []
        for i, row in enumerate(self.rows):
            value = row.get(name)
            if not isinstance(value, str):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = str(value)
                else:
                    raise DataError(f"{self.where(i)}: column {name!r} is {value!r}; expected text")
            values.append(value)
        return values

    def head(self, n: int | None) -> Table:
        if n is None or n >= len(self.rows):
            return self
        return Table(self.source, self.columns, self.rows[:n], self.lines[:n])

    def take(self, indices: list[int]) -> Table:
        lines = [self.lines[i] for i in indices] if self.lines else []
        return Table(self.source, self.columns, [self.rows[i] for i in indices], lines)


def read_table(spec: str, split: str = "train") -> Table:
    """Read a data file, or a Hub dataset given as ``hf:NAME[:CONFIG][@SPLIT]`` (or a bare Hub name).

    Args:
        spec: a local path, or a Hugging Face dataset name.
        split: the split to load from a Hub dataset when ``spec`` names none.

    Raises:
        DataError: missing or empty file, malformed row, non-UTF-8 bytes, unknown format.
    """
    if spec.startswith("hf:"):
        return _read_hub(spec[3:], split)
    path = Path(spec)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if path.exists():
            raise DataError(f"{spec}: unsupported format; expected one of {', '.join(TABLE_SUFFIXES)}")
        return _read_hub(spec, split)
    if not path.is_file():
        raise DataError(f"{spec}: file not found")
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    return parse_text(_read_utf8(path), path.suffix.lower(), str(path))


def read_stdin() -> Table:
    """Read prediction inputs from stdin: JSONL if the first line is an object, else one text per line."""
    data = sys.stdin.buffer.read()
    text = _decode(data, "<stdin>")
    first = text.lstrip()[:1]
    return parse_text(text, ".jsonl" if first == "{" else ".txt", "<stdin>")


def parse_text(text: str, suffix: str, source: str) -> Table:
    """Parse already-decoded text in the format given by ``suffix``."""
    if not text.strip():
        raise DataError(f"{source}: empty file; expected {_expectation(suffix)}")
    if suffix in (".csv", ".tsv"):
        return _parse_delimited(text, "\t" if suffix == ".tsv" else ",", source)
    if suffix in (".jsonl", ".json"):
        return _parse_json(text, source)
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    return Table(source, ["text"], [{"text": line} for _, line in lines], [n for n, _ in lines])


def _expectation(suffix: str) -> str:
    if suffix in (".csv", ".tsv"):
        return "a header line and at least one row"
    if suffix in (".jsonl", ".json"):
        return "one JSON object per line"
    return "one text per line"


def _read_utf8(path: Path) -> str:
    return _decode(path.read_bytes(), str(path))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{source}:{line}: invalid UTF-8 byte 0x{data[err.start]:02x}; expected UTF-8 text") from None


def _parse_delimited(text: str, delimiter: str, source: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        columns = [name.strip() for name in header]
        if len(set(columns)) != len(columns) or not all(columns):
            raise DataError(f"{source}:1: header {header!r} has empty or repeated column names")
        rows, lines = [], []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(columns):
                raise DataError(
                    f"{source}:{reader.line_num}: expected {len(columns)} fields ({', '.join(columns)}), "
                    f"got {len(fields)}"
                )
            rows.append(dict(zip(columns, fields, strict=True)))
            lines.append(reader.line_num)
    except csv.Error as err:
        raise DataError(f"{source}:{reader.line_num}: malformed row ({err})") from None
    if not rows:
        raise DataError(f"{source}: no rows after the header; expected at least one row")
    return Table(source, columns, rows, lines)


def _parse_json(text: str, source: str) -> Table:
    if text.lstrip().startswith("["):  # a .json file holding one list of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{source}:{err.lineno}: invalid JSON ({err.msg})") from None
        numbered = list(enumerate(items, start=1))
        lines: list[int] = []
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{source}:{number}: invalid JSON ({err.msg}); expected one object per line") from None
        lines = [n for n, _ in numbered]
    rows = []
    for number, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"{source}:{number}: expected a JSON object, got {type(item).__name__}")
        rows.append(item)
    if not rows:
        raise DataError(f"{source}: no rows; expected one JSON object per line")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Table(source, columns, rows, lines)


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: empty file; expected at least one row")
    return Table(str(path), table.column_names, table.to_pylist())


def _read_hub(spec: str, default_split: str) -> Table:
    name, _, split = spec.partition("@")
    name, _, subset = name.partition(":")
    split = split or default_split
    try:
        import datasets

        dataset = datasets.load_dataset(name, subset or None, split=split)
    except Exception as err:  # datasets raises many types: network, not found, bad split
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{spec}: could not load Hugging Face dataset {name!r} (split {split!r}): {reason}. "
            "Without network access, pass a local CSV/TSV/JSONL/Parquet file instead"
        ) from None
    return Table(f"hf:{spec}", list(dataset.column_names), dataset.to_list())
