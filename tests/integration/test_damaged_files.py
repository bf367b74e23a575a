"""Damaged run and model directories through the CLI on the real bundled model: one line naming the file and
what is wrong, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from lmtune.cli.main import main
from tests.conftest import REPO

pytestmark = pytest.mark.integration

RUN_FILES = ("config.yaml", "task.json", "versions.json", "metrics.json", "metrics.jsonl", "train_sample.json",
             "example_losses.jsonl", "model")


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of the finished SST-2 run (without its checkpoints), free to damage."""
    source, _ = trained_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in RUN_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, copy / name)
        elif (source / name).exists():
            shutil.copy2(source / name, copy / name)
    return copy


def _fails(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("lmtune: error: ")
    return err[-1].removeprefix("lmtune: error: ")


def _predict(run):
    return ("predict", str(run), "--input", str(REPO / "examples" / "data" / "sentiment_dev.csv"))


def test_truncated_weights(capsys, run):
    weights = run / "model" / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size // 3)
    expected = f"{weights}: truncated: {size // 3} bytes of the {size} its header describes"
    assert _fails(capsys, *_predict(run)) == expected


def test_random_bytes_for_weights(capsys, run):
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(os.urandom(1 << 16))
    assert _fails(capsys, *_predict(run)).startswith(f"{weights}: not a safetensors file")


def test_missing_tokenizer_files(capsys, run):
    for name in ("tokenizer.json", "vocab.txt"):
        (run / "model" / name).unlink(missing_ok=True)
    assert _fails(capsys, "eval", str(run), "--data", str(REPO / "examples" / "data" / "sentiment_dev.csv")) \
        .startswith(f"{run / 'model'}: no tokenizer files (expected one of tokenizer.json")


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("task.json", b'{"task": "classif', "not valid JSON (line 1, column 10: Unterminated string"),
    ("task.json", b"", "empty file; expected the run's task state"),
    ("config.yaml", b"task: classification\ndata: [\n", "not valid YAML at line 3"),
    ("config.yaml", b"task: nonsense\ndata: {train: t.csv}\n", "not a valid run config (task: unknown task 'nonsense'"),
    ("model/config.json", b"\x00\x01", "not valid JSON"),
])
def test_damaged_run_files(capsys, run, name, content, problem):
    (run / name).write_bytes(content)
    assert _fails(capsys, *_predict(run)).startswith(f"{run / name}: {problem}")


def test_damaged_metrics_for_report_and_diagnose(capsys, caplog, run, monkeypatch):
    final = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text('{"validation": {"accuracy": 0.8')
    assert _fails(capsys, "report", str(run)).startswith(f"{run / 'metrics.json'}: not valid JSON")
    assert not (run / "report.html").exists()
    (run / "metrics.json").write_text(final)
    (run / "diagnosis.json").write_text('{"state": "healthy"}')  # derived data: diagnosed again, not refused
    from lmtune.reporting import build

    monkeypatch.setattr(build, "SECTIONS", [("Diagnosis", build._diagnosis)])  # only what this test is about
    assert main(["report", str(run), "--out", str(run / "r.html")]) == 0
    assert f"{run / 'diagnosis.json'}: a diagnosis lacks 'findings'; the file is damaged; diagnosing the run again" \
        in caplog.text
    assert json.loads((run / "diagnosis.json").read_text())["findings"]
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + "{garbage\n" + "".join(lines[2:]))
    assert _fails(capsys, "diagnose", str(run)) == f"{run / 'metrics.jsonl'}:3: not a JSON object; the log is damaged"


def test_a_damaged_model_directory_as_model_writes_nothing(capsys, run, tmp_path):
    (run / "model" / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 20)
    out = tmp_path / "out"
    message = _fails(capsys, "train", str(REPO / "examples" / "sentiment.yaml"), f"model={run}", f"output={out}")
    assert message.startswith(f"{run / 'model' / 'model.safetensors'}: ")
    assert not out.exists()


def test_no_traceback_from_a_real_process(run):
    import subprocess

    (run / "model" / "model.safetensors").write_bytes(b"not weights")
    result = subprocess.run([sys.executable, "-m", "lmtune", *_predict(run)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_missing_database_driver_is_one_line_before_any_work(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    out = tmp_path / "cmp"
    message = _fails(capsys, "compare", str(REPO / "examples" / "sentiment.yaml"), f"output={tmp_path / 'x'}",
                     "--storage", "postgresql://lmtune@127.0.0.1:5999/study", "--out", str(out))
    assert message == ("--storage: postgresql through the psycopg driver needs the psycopg[binary] package, "
                       "which is not installed (psycopg): pip install 'psycopg[binary]'")
    assert not out.exists()


def test_a_missing_attribution_package_is_one_line(capsys, monkeypatch, run):
    monkeypatch.setitem(sys.modules, "captum", None)
    message = _fails(capsys, "explain", str(run), "--text", "a fine film", "--method", "ig", "--no-png",
                     "--no-checks", "--no-base", "--out", str(run / "x"))
    assert message.startswith("--method ig: Integrated Gradients (gradxinput and occlusion work without it): "
                              "needs the captum package, which is not installed: pip install 'captum'")
