"""Bad input: one clear line on stderr naming the file/field, exit code 2, nothing written."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lmtune.cli.main import main
from tests.conftest import REPO, lmtune_command

pytestmark = pytest.mark.integration


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture
def config(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\nfine film,pos\n")
    (tmp_path / "dev.csv").write_text("text,label\nnice film,pos\n")
    path = tmp_path / "run.yaml"
    path.write_text(
        f"data: {{train: {tmp_path / 'train.csv'}, validation: {tmp_path / 'dev.csv'}}}\n"
        f"train: {{max_steps: 1, batch_size: 2}}\noutput: {tmp_path / 'out'}\n"
    )
    return path


@pytest.mark.parametrize(
    ("setup", "override", "message"),
    [
        (None, "data.train=/nonexistent/train.csv", "/nonexistent/train.csv: file not found"),
        (("e.csv", b""), "data.train={d}/e.csv", "e.csv: empty file; expected a header line and at least one row"),
        (("c.csv", b"sentence,label\nhi,pos\n"), "data.train={d}/c.csv", "c.csv: no column 'text'"),
        (("m.csv", b"text,label\na,pos\nb,neg,x\n"), "data.train={d}/m.csv", "m.csv:3: expected 2 fields"),
        (("o.csv", b"text,label\na,pos\nb,pos\n"), "data.train={d}/o.csv", "label column 'label' has only one class"),
        (("u.csv", b"text,label\na,pos\n\xe9t\xe9,neg\n"), "data.train={d}/u.csv", "u.csv:3: invalid UTF-8 byte 0xe9"),
        (None, "train.batch_size=0", "train.batch_size: 0 must be > 0"),
        (None, "train.lr=-1", "train.lr: -1.0 must be > 0"),
        (None, "train.epochs=lots", "train.epochs: 'lots' is not a number"),
        (None, "output=/dev/null/run", "output: cannot create /dev/null/run: /dev/null is a file"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, config, setup, override, message):
    directory = config.parent
    if setup:
        (directory / setup[0]).write_bytes(setup[1])
    code, line = _run(capsys, "train", str(config), override.format(d=directory))
    assert code == 2
    assert line.startswith("lmtune: error: ") and message in line
    assert not (directory / "out").exists()


def test_unknown_label_at_eval_time(capsys, trained_run, tmp_path):
    run, _ = trained_run
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\ngreat .\t1\nhmm .\t7\n")
    code, line = _run(capsys, "eval", str(run), "--data", str(data))
    assert code == 2 and f"{data}:3: label 7 is not one of the training labels (0, 1)" in line


def test_incompatible_run_directory(capsys, trained_run, tmp_path):
    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, line = _run(capsys, "train", str(REPO / "examples" / "sst2.yaml"), f"output={copy}", "train.lr=0.1")
    assert code == 2 and "holds a run of a different config" in line and "train.lr" in line


def test_not_a_run_directory(capsys, tmp_path):
    code, line = _run(capsys, "predict", str(tmp_path), "--input", "-")
    assert code == 2 and "not an lmtune run directory" in line


def test_real_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: a.csv\n")
    result = subprocess.run(lmtune_command("train", str(bad)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr
    debug = subprocess.run(lmtune_command("--debug", "train", str(bad)), capture_output=True, text=True, timeout=120)
    assert "Traceback" in debug.stderr


def test_a_run_that_would_not_fit_in_memory_is_refused_before_anything_is_written(sst2_slice, tmp_path, cli):
    out = tmp_path / "huge"
    result = cli("train", "examples/sst2.yaml", f"data.train={sst2_slice['train']}", "train.batch_size=200000",
                 "train.max_length=512", f"output={out}")
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith(
        "lmtune: error: train: this run would not fit in memory: estimated peak ")
    line = result.stderr.strip().splitlines()[-1]
    assert "GiB available; try train.batch_size=" in line and "activations " in line and "optimizer " in line
    suggested = int(line.rsplit("train.batch_size=", 1)[1])
    assert 0 < suggested < 200000
    assert not (out / "config.yaml").exists() and not any(p.name != ".lock" for p in out.glob("*"))
