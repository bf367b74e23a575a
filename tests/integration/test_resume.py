"""A run killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, kill_at_checkpoint, lmtune_command

pytestmark = pytest.mark.integration


def _train_args(sst2_slice, out):
    return lmtune_command(
        "train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
        f"data.validation={sst2_slice['dev']}", f"output={out}", "train.epochs=2", "train.batch_size=16",
        "train.eval_every=4", "train.lr=1e-4", "train.log_every=2", "train.seed=7",
    )


def _validation_log(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["loss"], x["accuracy"]) for x in lines if x["split"] == "validation"]


def test_killed_run_resumes_to_identical_metrics(sst2_slice, tmp_path):
    whole = tmp_path / "whole"
    result = subprocess.run(_train_args(sst2_slice, whole), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    kill_at_checkpoint(_train_args(sst2_slice, killed), killed, step=8)  # step 8 of 15 in epoch 1: mid-epoch
    assert not (killed / "metrics.json").exists()

    result = subprocess.run(_train_args(sst2_slice, killed), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resumed from step-" in result.stderr

    expected = json.loads((whole / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    for key in ("step", "best_step", "best_accuracy"):
        assert got[key] == expected[key], key
    assert got["validation"]["loss"] == pytest.approx(expected["validation"]["loss"], abs=1e-6)
    assert got["validation"]["accuracy"] == expected["validation"]["accuracy"]
    assert _validation_log(killed) == _validation_log(whole)
