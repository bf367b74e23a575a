"""The diagnosis recognises each state on constructed runs (hand-written logs and data)."""

from __future__ import annotations

import json

import pytest
import yaml

from lmtune.config import config_to_dict
from lmtune.diagnosis import Diagnosis, diagnose
from lmtune.loader import load_config


def _run(tmp_path, validation, sample=None, train_losses=None, final=None, rows=None, val_rows=None,
         example_losses=None, **config):
    """A run directory with the given evaluations: ``validation``/``sample`` are (accuracy, loss) per evaluation."""
    run = tmp_path / "run"
    run.mkdir()
    rows = rows or [{"text": f"text number {i}", "label": i % 2} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": str(tmp_path / "train.jsonl")}
    if val_rows is not None:
        (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_rows))
        data["validation"] = str(tmp_path / "dev.jsonl")
    cfg = load_config({"data": data, "output": str(run), **config})
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    (run / "task.json").write_text(json.dumps({"labels": [0, 1]}))
    lines = []
    steps = [10 * (i + 1) for i in range(len(validation))]
    losses = train_losses or [max(0.3, 0.7 - 0.02 * i) for i in range(10 * len(validation))]
    lines += [{"step": i + 1, "split": "train", "loss": v} for i, v in enumerate(losses)]
    for k, step in enumerate(steps):
        if sample:
            lines.append({"step": step, "epoch": k + 1, "split": "train_sample", "accuracy": sample[k][0],
                          "loss": sample[k][1]})
        lines.append({"step": step, "epoch": k + 1, "split": "validation", "accuracy": validation[k][0],
                      "loss": validation[k][1]})
    lines.sort(key=lambda x: x["step"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if final is not None:
        (run / "metrics.json").write_text(json.dumps(final))
    if example_losses is not None:
        n = len(example_losses[0])
        (run / "train_sample.json").write_text(json.dumps({"indices": list(range(n))}))
        (run / "example_losses.jsonl").write_text(
            "".join(json.dumps({"step": steps[k], "losses": row}) + "\n" for k, row in enumerate(example_losses)))
    return run


OVERFIT_VAL = [(0.70, 0.60), (0.80, 0.45), (0.82, 0.44), (0.80, 0.55), (0.78, 0.70), (0.77, 0.80)]
OVERFIT_SAMPLE = [(0.72, 0.58), (0.88, 0.30), (0.95, 0.15), (0.99, 0.05), (1.0, 0.02), (1.0, 0.01)]


def test_overfitting_names_the_step_the_evidence_and_pasteable_fixes(tmp_path):
    diagnosis = diagnose(_run(tmp_path, OVERFIT_VAL, OVERFIT_SAMPLE))
    assert diagnosis.state == "overfitting"
    finding = diagnosis.findings[0]
    assert "stopped improving at step 30" in finding.title
    assert any("gap at the end: 0.2300" in line for line in finding.evidence)
    overrides = [o for s in finding.suggestions for o in s.overrides]
    assert "early_stopping.metric=accuracy" in overrides and "regularization.weight_decay=0.1" in overrides
    assert (tmp_path / "run" / "diagnosis.json").is_file()
    assert Diagnosis.from_dict(json.loads((tmp_path / "run" / "diagnosis.json").read_text())) == diagnosis
    load_config({"data": {"train": "x.csv"}}, overrides)  # every suggestion is a valid override


def test_overfitting_caught_by_early_stopping_is_healthy(tmp_path):
    run = _run(tmp_path, OVERFIT_VAL, [(0.72, 0.58), (0.84, 0.40), (0.86, 0.35), (0.99, 0.05), (1.0, 0.02),
                                       (1.0, 0.01)], final={"restored_step": 30})
    diagnosis = diagnose(run)
    assert diagnosis.state == "healthy" and "was caught" in diagnosis.findings[0].title


def test_healthy_run(tmp_path):
    val = [(0.70, 0.6), (0.80, 0.45), (0.84, 0.40), (0.85, 0.38), (0.85, 0.38)]
    sample = [(0.71, 0.58), (0.82, 0.42), (0.86, 0.36), (0.87, 0.35), (0.88, 0.34)]
    assert diagnose(_run(tmp_path, val, sample)).state == "healthy"


def test_underfitting_when_the_model_barely_beats_the_majority_class(tmp_path):
    val = [(0.50, 0.70), (0.51, 0.69), (0.52, 0.69)]
    sample = [(0.50, 0.70), (0.52, 0.69), (0.53, 0.69)]
    final = {"validation": {"confusion_matrix": [[50, 0], [50, 0]]}}
    diagnosis = diagnose(_run(tmp_path, val, sample, final=final, train={"epochs": 2, "lr": 1e-5}))
    assert diagnosis.state == "underfitting"
    overrides = [o for s in diagnosis.findings[0].suggestions for o in s.overrides]
    assert "train.epochs=4" in overrides and "train.lr=3e-05" in overrides


def test_underfitting_when_still_improving_at_the_end(tmp_path):
    val = [(0.60, 0.66), (0.66, 0.62), (0.70, 0.58), (0.73, 0.55)]
    sample = [(0.61, 0.65), (0.67, 0.61), (0.71, 0.57), (0.74, 0.54)]
    losses = [0.7 * 0.97**i for i in range(40)]
    diagnosis = diagnose(_run(tmp_path, val, sample, train_losses=losses))
    assert diagnosis.state == "underfitting" and "still improving" in diagnosis.findings[0].title


def test_nan_loss_is_diverging(tmp_path):
    losses = [0.7, 0.6, 0.5, "nan", "nan"] + [0.5] * 25
    diagnosis = diagnose(_run(tmp_path, OVERFIT_VAL[:3], OVERFIT_SAMPLE[:3], train_losses=losses,
                              train={"lr": 1e-3}))
    assert diagnosis.state == "diverging" and "step 4" in diagnosis.findings[0].title
    assert "train.lr=0.0002" in [o for s in diagnosis.findings[0].suggestions for o in s.overrides]


def test_loss_spikes_that_end_above_the_start_are_diverging(tmp_path):
    losses = [0.7, 0.65, 0.6, 0.6, 0.58, 0.57, 3.0, 1.5, 1.2, 4.0, 2.0, 2.5, 2.2, 2.4, 2.3]
    val = [(0.7, 0.6), (0.5, 2.0), (0.5, 2.3)]
    diagnosis = diagnose(_run(tmp_path, val, train_losses=losses))
    assert diagnosis.state == "diverging"
    assert any("spike at step 7" in line for line in diagnosis.findings[0].evidence)


def test_too_few_evaluations_is_unknown(tmp_path):
    assert diagnose(_run(tmp_path, OVERFIT_VAL[:2])).state == "unknown"


def test_data_problems_leaks_contradictions_imbalance_and_label_noise(tmp_path):
    rows = [{"text": f"good film {i}", "label": 1} for i in range(32)] + [
        {"text": f"bad film {i}", "label": 0} for i in range(4)]
    rows += [{"text": "Good  film 3", "label": 0}]  # contradicts row 3 (case and spacing differ)
    val_rows = [{"text": "good film 1", "label": 1}, {"text": "bad film 2", "label": 1},
                {"text": "new one", "label": 0}]
    val = [(0.70, 0.6), (0.80, 0.45), (0.84, 0.40), (0.843, 0.39)]  # a plateau: the last gain is noise
    sample = [(0.71, 0.58), (0.82, 0.42), (0.86, 0.36), (0.87, 0.35)]
    losses = [[0.1] * 37 for _ in range(4)]
    for row in losses[2:]:
        row[36] = 3.0  # the contradicting row keeps a high loss
    diagnosis = diagnose(_run(tmp_path, val, sample, rows=rows, val_rows=val_rows, example_losses=losses))
    assert diagnosis.state == "data problem"
    titles = [f.title for f in diagnosis.findings if f.kind == "data"]
    assert "1 of 3 validation examples also in the training data (duplicates)" in titles
    assert "1 validation example also in training with a different label" in titles
    assert "1 training text with contradictory labels" in titles
    assert any(t.startswith("label imbalance: '1' has 6.4x") for t in titles)
    noise = next(f for f in diagnosis.findings if "label noise" in f.title)
    assert noise.examples[0]["text"] == "Good  film 3" and noise.examples[0]["where"].endswith(":37")


@pytest.mark.parametrize(("missing", "state"), [("metrics.jsonl", "unknown"), ("train.jsonl", "overfitting")])
def test_missing_pieces_do_not_crash(tmp_path, missing, state):
    run = _run(tmp_path, OVERFIT_VAL, OVERFIT_SAMPLE)
    (run / missing if missing == "metrics.jsonl" else tmp_path / missing).unlink()
    diagnosis = diagnose(run)
    assert diagnosis.state == state  # no log: nothing to judge; no data: the curves still show overfitting
    assert diagnosis.text().startswith("diagnosis of")
