import io
import sys

import pytest

from lmtune.data import read_stdin, read_table
from lmtune.errors import DataError


def test_reads_csv_tsv_jsonl_parquet(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello\t1\n\nbye\t0\n")
    (tmp_path / "a.jsonl").write_text('{"text": "hello", "label": 1}\n\n{"text": "bye", "label": 0}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["hello", "bye"], "label": [1, 0]}), tmp_path / "a.parquet")
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.parquet"):
        table = read_table(str(tmp_path / name))
        assert table.columns == ["text", "label"] and len(table) == 2, name
    assert read_table(str(tmp_path / "a.csv")).rows[0]["text"] == "hello, world"
    assert read_table(str(tmp_path / "a.tsv")).where(1) == f"{tmp_path / 'a.tsv'}:4"  # blank line skipped


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.csv", b"", "empty file; expected a header line"),
        ("h.csv", b"text,label\n", "no rows after the header"),
        ("m.tsv", b"text\tlabel\na\t1\nb\t1\textra\n", r"m.tsv:3: expected 2 fields \(text, label\), got 3"),
        ("u.csv", b"text,label\nok,1\nbad \xff byte,0\n", r"u.csv:3: invalid UTF-8 byte 0xff"),
        ("j.jsonl", b'{"text": "a"}\n{"text": \n', r"j.jsonl:2: invalid JSON"),
        ("l.jsonl", b'{"text": "a"}\n[1, 2]\n', r"l.jsonl:2: expected a JSON object, got list"),
        ("x.parquet", b"not parquet", "not a readable Parquet file"),
    ],
)
def test_bad_files_name_file_line_and_expectation(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(str(tmp_path / name))


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_table(str(tmp_path / "nope.csv"))
    (tmp_path / "a.csv").write_text("sentence,label\nhi,1\n")
    table = read_table(str(tmp_path / "a.csv"))
    with pytest.raises(DataError, match=r"no column 'text'; the file has columns 'sentence', 'label'"):
        table.require("text")


def test_hub_dataset_offline_gives_one_line(monkeypatch):
    with pytest.raises(DataError, match="could not load Hugging Face dataset 'no-such/dataset'") as info:
        read_table("hf:no-such/dataset")
    assert "\n" not in str(info.value)


def test_stdin_plain_lines_and_jsonl(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"first text\n\nsecond text\n")))
    assert [r["text"] for r in read_stdin().rows] == ["first text", "second text"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"sentence": "a b"}\n')))
    assert read_stdin().rows == [{"sentence": "a b"}]
