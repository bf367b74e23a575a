"""The real CLI on the real bundled MiniLM and a slice of SST-2: train, eval, predict, API, pipeline."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, lmtune_command, trained_run_command

pytestmark = pytest.mark.integration


def test_run_directory_layout_and_logs(trained_run):
    run, summary = trained_run
    for name in ("config.yaml", "versions.json", "task.json", "metrics.jsonl", "metrics.json", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints and all(name.startswith("step-") for name in checkpoints)
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json",
            "config.yaml"} <= {p.name for p in (run / "checkpoints" / checkpoints[-1]).iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    val_lines = [x for x in lines if x["split"] == "validation"]
    assert [x["step"] for x in val_lines] == [10, 15, 20, 30]  # every 10 steps and at each epoch end (15/epoch)
    assert train_lines[0]["loss"] > 0 and train_lines[0]["samples_per_s"] > 0
    assert summary["step"] == 30 and summary["precision"] in ("bf16", "no")
    # learns something real even from 240 sentences
    assert summary["validation_accuracy"] > 0.6
    assert json.loads((run / "task.json").read_text())["labels"] == [0, 1]


def test_eval_json_prints_one_object_of_metrics(trained_run, sst2_slice, cli):
    run, summary = trained_run
    result = cli("eval", run, "--data", sst2_slice["dev"], "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["accuracy"] == pytest.approx(summary["validation_accuracy"], abs=1e-6)
    assert {"macro_f1", "per_class", "confusion_matrix", "loss"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 120


def test_predict_from_file_and_stdin(trained_run, tmp_path, cli):
    run, _ = trained_run
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"sentence": "a gorgeous, witty, seductive movie ."}\n{"sentence": "the worst film ."}\n')
    out = tmp_path / "out.jsonl"
    result = cli("predict", run, "--input", inputs, "--output", out)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a gorgeous, witty, seductive movie .", "the worst film ."]
    assert all(set(r) == {"text", "label", "score", "scores"} for r in rows)
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-4
    # stdin through a real pipe: a process of its own
    result = subprocess.run(lmtune_command("predict", str(run), "--input", "-"), input="one line\nanother line\n",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["one line", "another line"]


def test_python_api_and_plain_transformers_pipeline_agree(trained_run):
    from transformers import pipeline

    import lmtune

    run, _ = trained_run
    texts = ["a gorgeous, witty, seductive movie .", "the worst film of the year ."]
    ours = lmtune.load(run).predict(texts)
    theirs = pipeline("text-classification", model=str(run / "model"), device="cpu")(texts)
    assert [str(p["label"]) for p in ours] == [p["label"] for p in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        assert mine["score"] == pytest.approx(other["score"], abs=0.03)  # bf16 autocast vs fp32


def test_training_again_on_a_finished_run_is_a_no_op(trained_run, sst2_slice):
    run, summary = trained_run
    result = subprocess.run(trained_run_command(sst2_slice, run), capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "already holds this finished run" in result.stderr
    assert json.loads(result.stdout.strip())["validation_accuracy"] == summary["validation_accuracy"]
