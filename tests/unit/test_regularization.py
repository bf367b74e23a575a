"""Early stopping with best-weight restore, label smoothing and dropout overrides (tiny BERT)."""

from __future__ import annotations

import json

import pytest
import torch

import lmtune
from lmtune.data.splits import load_tables
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
    # the saved model is the best evaluation's checkpoint, tensor for tensor
    from safetensors.torch import load_file

    saved = load_file(out / "model" / "model.safetensors")
    best = load_file(out / "checkpoints" / "step-2" / "model.safetensors")
    assert saved.keys() & best.keys() and all(torch.equal(saved[k], best[k]) for k in saved.keys() & best.keys())
    last = load_file(out / "checkpoints" / "step-6" / "model.safetensors")
    assert any(not torch.equal(saved[k], last[k]) for k in saved.keys() & last.keys())


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


def test_rdrop_adds_the_symmetric_kl_between_two_dropout_passes(tiny):
    from transformers import AutoModelForSequenceClassification

    from lmtune.training.regularizers import rdrop_loss, symmetric_kl

    a = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symmetric_kl(a, a.flip(-1)).item() > 0.1
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=2, hidden_dropout_prob=0.3)
    task = Classification([0, 1])
    features = {"input_ids": torch.randint(5, 100, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    batch = {**features, "labels": torch.tensor([0, 1, 0, 1])}
    model.eval()  # no dropout: both passes agree and R-Drop is the plain task loss
    loss, task_loss = rdrop_loss(model, features, batch, task, alpha=5.0, label_smoothing=0.0)
    assert loss.item() == pytest.approx(task_loss.item(), abs=1e-5)
    assert task_loss.item() == pytest.approx(task.loss(model(**features), batch).item(), abs=1e-5)
    model.train()
    loss, task_loss = rdrop_loss(model, features, batch, task, alpha=5.0, label_smoothing=0.0)
    assert loss.item() > task_loss.item()


def test_weight_decay_and_clipping_live_under_regularization(tiny, data, tmp_path):
    with pytest.raises(lmtune.ConfigError, match=r"train.weight_decay: moved; write it as regularization.weight"):
        lmtune.load_config({"data": {"train": str(data)}, "train": {"weight_decay": 0.1}})
    cfg = lmtune.load_config({"data": {"train": str(data)},
                              "regularization": {"weight_decay": 0.1, "max_grad_norm": None, "rdrop": 1.0}})
    assert cfg.regularization.weight_decay == 0.1 and cfg.regularization.max_grad_norm is None


def test_augmented_rdrop_training_leaves_validation_data_as_written(tiny, data, tmp_path):
    out = tmp_path / "run"
    # every training example loses all but one word, every epoch; validation must not
    metrics = lmtune.train(_config(tiny, data, out, regularization={"rdrop": 1.0},
                                   augmentation={"methods": ["delete"], "rate": 1.0, "probability": 1.0},
                                   early_stopping={"restore_best": False}))
    assert metrics["cache"] == "off"
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(x["split"] == "train_sample" for x in log)
    run = lmtune.load(out)  # the final model, evaluated on the held-out rows as written
    held_out = load_tables(run.config.data, run.task)["validation"]
    assert metrics["validation"]["loss"] == pytest.approx(run.evaluate(held_out)["loss"], abs=1e-4)


def test_train_fraction_takes_a_seeded_subset(data):
    cfg = lmtune.load_config({"data": {"train": str(data), "train_fraction": 0.25}})
    first = load_tables(cfg.data, Classification())
    again = load_tables(cfg.data, Classification())
    assert len(first["train"]) == round(58 * 0.25) and first["train"].lines == again["train"].lines
