"""Experiment tracking against the real MLflow (SQLite store in a temp dir) and TensorBoard (its own event
reader), and `lmtune runs`: a killed and resumed run is one tracker run with one continuous history."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO, kill_at_checkpoint, lmtune_command, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path, monkeypatch):
    """MLflow puts a SQLite store's artifacts in ./mlruns of the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)


def _command(sst2_slice, out, store, *extra):
    return lmtune_command("train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
                          f"data.validation={sst2_slice['dev']}", f"output={out}", "train.max_steps=12",
                          "train.batch_size=16", "train.eval_every=4", "train.log_every=2",
                          "train.eval_train_samples=16", f"tracking.mlflow_uri={store}", *extra)


def _lines(run, split):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(x).get("split") == split]


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


def _runs(store, experiment="lmtune"):
    client = _client(store)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_killed_and_resumed_run_is_one_mlflow_run_with_one_history_and_tensorboard_agrees(sst2_slice, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    command = _command(sst2_slice, out, store, "--report-to", "mlflow,tensorboard")
    kill_at_checkpoint(command, out, step=8, cwd=tmp_path)
    [killed] = _runs(store)
    assert killed.info.status == "RUNNING"  # SIGKILL: nobody could close it
    result = run_cli(*command[3:], cwd=tmp_path)  # resumed in this process (the kill needed one of its own)
    assert result.returncode == 0, result.stderr
    assert "resumed from step-8" in result.stderr

    [run] = _runs(store)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "run" and run.data.params["train.lr"] == "5e-05"  # examples/sst2.yaml
    client = _client(store)
    for split, key in (("validation", "accuracy"), ("train", "loss"), ("train_sample", "loss")):
        expected = [(line["step"], line[key]) for line in _lines(out, split)]
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{split}/{key}"))
        assert [s for s, _ in history] == [s for s, _ in expected], split  # every step once, in order
        assert [v for _, v in history] == pytest.approx([v for _, v in expected]), split
    final = json.loads((out / "metrics.json").read_text())["validation"]
    assert float(run.data.tags["final.validation.accuracy"]) == pytest.approx(final["accuracy"], abs=1e-5)
    assert run.data.tags["lmtune.diagnosis"] == json.loads((out / "diagnosis.json").read_text())["state"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = sorted((e.step, e.value) for e in events.Scalars("validation/accuracy"))
    expected = [(line["step"], line["accuracy"]) for line in _lines(out, "validation")]
    assert [s for s, _ in scalars] == [s for s, _ in expected]  # each step once: the resumed run skipped its own
    assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], abs=1e-6)  # float32 in the events


def test_sigterm_marks_the_tracker_run_killed_and_runs_lists_it(sst2_slice, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(sst2_slice, out, store, "tracking.report_to=mlflow", "train.max_steps=400"),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    listed = run_cli("runs", tmp_path, "--json", cwd=tmp_path)  # `lmtune runs` reads files: in this process
    assert json.loads(listed.stdout)["status"] == "running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    [run] = _runs(store)
    assert run.info.status == "KILLED"
    row = json.loads(run_cli("runs", tmp_path, "--json", cwd=tmp_path).stdout)
    assert row["status"] == "killed" and row["task"] == "classification" and row["strategy"] == "full"
    assert row["metric"] == "accuracy" and row["age_s"] < 120
    table = run_cli("runs", tmp_path, cwd=tmp_path)
    assert table.stdout.splitlines()[0].split() == ["run", "task", "model", "strategy", "status", "best", "age"]


def test_a_run_that_fails_is_marked_failed(sst2_slice, tmp_path):
    import lmtune

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def fail(step, metrics):
        raise RuntimeError("evaluation hook broke")

    config = {"task": "classification", "model": "bundled:minilm",
              "data": {"train": str(sst2_slice["train"]), "validation": str(sst2_slice["dev"]), "text": "sentence"},
              "train": {"max_steps": 4, "eval_every": 2, "batch_size": 16, "eval_train_samples": 0},
              "tracking": {"report_to": ["mlflow"], "mlflow_uri": store}, "output": str(tmp_path / "run")}
    with pytest.raises(RuntimeError, match="evaluation hook broke"):
        lmtune.train(config, on_eval=fail)
    [run] = _runs(store)
    assert run.info.status == "FAILED"
    from lmtune.run_list import list_runs

    assert list_runs(tmp_path)[0]["status"] == "failed"


def test_a_tracker_that_cannot_start_stops_the_run_before_it_trains(sst2_slice, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(_command(sst2_slice, out, "http://127.0.0.1:9/", "train.max_steps=2", "--report-to",
                                     "mlflow"),
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**__import__("os").environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("lmtune: error: tracking.report_to: mlflow could not start (")
    assert not out.exists()  # nothing trained, nothing left behind


@pytest.mark.parametrize("tracker", ["trackio", "wandb"])
def test_a_tracker_that_is_not_installed_is_one_line(tracker, tmp_path, monkeypatch, capsys):
    import sys

    from lmtune.cli.main import main

    monkeypatch.setitem(sys.modules, tracker, None)  # what Python does for a package that is not there
    out = tmp_path / "run"
    assert main(["train", str(REPO / "examples" / "sentiment.yaml"), f"output={out}",
                 f"tracking.report_to={tracker}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lmtune: error: {REPO / 'examples' / 'sentiment.yaml'}: tracking.report_to: {tracker} needs the {tracker} "
        f"package, which is not installed: pip install {tracker}")
    assert not out.exists()


def test_track_replays_a_finished_run_once(trained_run, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir, _ = trained_run
    copy = tmp_path / "sst2"
    import shutil

    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    for _ in range(2):  # the second replay finds everything logged already
        result = run_cli("track", copy, "--to", "mlflow", "--mlflow-uri", store, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    [run] = _runs(store)
    assert run.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in _client(store).get_metric_history(run.info.run_id,
                                                                                     "validation/accuracy"))
    expected = [(line["step"], line["accuracy"]) for line in _lines(copy, "validation")]
    assert [s for s, _ in history] == [s for s, _ in expected]
    assert [v for _, v in history] == pytest.approx([v for _, v in expected])


def test_compare_logs_a_parent_run_and_a_child_per_trial(sst2_slice, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("compare", REPO / "examples" / "sst2.yaml", f"data.train={sst2_slice['train']}",
                     f"data.validation={sst2_slice['dev']}", f"output={tmp_path / 'cmp'}", "train.batch_size=16",
                     "train.eval_train_samples=0", f"tracking.mlflow_uri={store}", "--strategies", "head,bitfit",
                     "--budget", "4", "--no-prune", "--report-to", "mlflow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = _runs(store)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["bitfit-v0-s42", "head-v0-s42"]  # the trial keys
    assert all(r.info.status == "FINISHED" for r in runs)
    winner = result.stdout.split("winner: ")[1].split()[0]
    assert parent.data.tags["lmtune.winner"] == winner


@pytest.mark.parametrize("tracker", ["trackio", "wandb"])
def test_trackio_and_wandb_log_locally(sst2_slice, tmp_path, tracker, monkeypatch):
    """Optional for users, installed for the tests (the dev extra): both log offline, to local files."""
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = subprocess.run(_command(sst2_slice, out, "unused", "train.max_steps=4", "train.eval_every=2",
                                     f"tracking.report_to={tracker}"),
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "tracking.json").read_text())[tracker]["last_step"] == 4
    if tracker == "trackio":
        import sqlite3

        rows = sqlite3.connect(tmp_path / "trackio" / "lmtune.db").execute(
            "select step, metrics from metrics order by id").fetchall()
        logged = {step: json.loads(metrics) for step, metrics in rows}
        assert [line["accuracy"] for line in _lines(out, "validation")] == [
            logged[step]["validation/accuracy"] for step in (2, 4)]
    else:
        assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
