"""Early stopping with best-weight restore, label smoothing and dropout overrides (tiny BERT)."""

from __future__ import annotations

import json

import pytest
import torch

import lmtune
from lmtune.tasks.classification import Classification
from tests.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-reg"), layers=2)


@pytest.fixture
def data(tmp_path):
    rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": i % 2} for i in range(64)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tiny, data, out, **sections):
    return {"model": str(tiny), "data": {"train": str(data)}, "output": str(out),
            "train": {"epochs": 4, "batch_size": 8, "lr": 1e-3, "precision": "fp32", "eval_every": 2}, **sections}


def test_early_stopping_stops_and_the_final_model_is_the_best_evaluation(tiny, data, tmp_path):
    out = tmp_path / "run"
    # min_delta so large that nothing after the first evaluation counts as an improvement
    metrics = lmtune.train(_config(tiny, data, out, early_stopping={"metric": "loss", "patience": 2,
                                                                    "min_delta": 100.0}))
    assert metrics["stopped_early"] and metrics["step"] == 6 and metrics["best_step"] == 2
    assert metrics["restored_step"] == 2
    first = next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"validation"' in x)
    assert metrics["validation"]["loss"] == pytest.approx(first["loss"], abs=1e-5)
    assert lmtune.load(out).evaluate(str(data))["loss"] >= 0


def test_unknown_watched_metric_is_a_clear_error_before_anything_is_written(tiny, data, tmp_path):
    with pytest.raises(lmtune.LmtuneError, match=r"early_stopping.metric: 'bleu' is not a validation metric"):
        lmtune.train(_config(tiny, data, tmp_path / "run", early_stopping={"metric": "bleu"}))
    assert not (tmp_path / "run").exists()


def test_label_smoothing_raises_the_loss_of_confident_correct_predictions():
    task = Classification([0, 1])
    outputs = type("Out", (), {"logits": torch.tensor([[10.0, -10.0]])})()
    batch = {"labels": torch.tensor([0])}
    assert task.loss(outputs, batch).item() < 1e-6
    assert task.loss(outputs, batch, label_smoothing=0.2).item() > 1.0


def test_dropout_overrides_reach_the_model(tiny, data, tmp_path):
    out = tmp_path / "run"
    lmtune.train(_config(tiny, data, out, regularization={"dropout": 0.3, "attention_dropout": 0.2,
                                                          "label_smoothing": 0.1},
                         train={"max_steps": 1, "batch_size": 8, "precision": "fp32"}))
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.3 and config["attention_probs_dropout_prob"] == 0.2
