"""The training loop on a tiny BERT (2 layers, width 32): step plans, accumulation, logging, validation split."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.config import TrainConfig
from lmtune.training.loop import plan_steps
from tests.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), layers=2)


@pytest.fixture
def three_class_pairs(tmp_path):
    """A 3-class sentence-pair task (entailment-like) as JSONL with string labels."""
    rows = []
    for i in range(60):
        kind = ["same", "opposite", "unrelated"][i % 3]
        second = {"same": "it is good", "opposite": "it is bad", "unrelated": "the sky is blue"}[kind]
        rows.append({"premise": f"item {i} is good", "hypothesis": second, "relation": kind})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_pairs(model, data, out, **train) -> dict:
    """2 epochs of the pairs task (a quarter held out) with 2 accumulated batches per step, logging every step."""
    return lmtune.train({
        "model": str(model),
        "data": {"train": str(data), "text": "premise", "text_pair": "hypothesis", "label": "relation",
                 "validation_split": 0.25},
        "train": {"epochs": 2, "grad_accum": 2, "lr": 1e-3, "log_every": 1, "precision": "fp32", **train},
        "output": str(out),
    })


def test_plan_steps_with_accumulation_and_processes():
    lengths = [7] * 100
    assert plan_steps(lengths, TrainConfig(batch_size=10, epochs=2), 1) == (10, 20)
    assert plan_steps(lengths, TrainConfig(batch_size=10, grad_accum=3, epochs=1), 1) == (4, 4)
    assert plan_steps(lengths, TrainConfig(batch_size=10, epochs=1.5), 2) == (5, 8)
    assert plan_steps(lengths, TrainConfig(batch_size=10, max_steps=7), 1) == (10, 7)
    # a token budget of 70 holds 10 examples of 7 tokens, 5 of 14
    assert plan_steps(lengths, TrainConfig(batch_size=4, batch_tokens=70, max_length=64, epochs=2), 1) == (10, 20)
    assert plan_steps([14] * 100, TrainConfig(batch_tokens=70, max_length=64, epochs=1.5), 2) == (10, 15)
    with pytest.raises(lmtune.LmtuneError, match=r"data.train: 3 training examples make no batch of "
                                                 r"train.batch_tokens=70 for each of 4 processes"):
        plan_steps([7] * 3, TrainConfig(batch_tokens=70, max_length=64), 4)


def test_token_budget_training_ends_its_schedule_exactly_at_the_last_epoch(tiny_bert, three_class_pairs, tmp_path):
    out = tmp_path / "run"
    metrics = _train_pairs(tiny_bert, three_class_pairs, out, batch_size=4, batch_tokens=96, max_length=32,
                           eval_train_samples=0)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x.get("split") == "train"]
    epoch_ends = [x for x in lines if x.get("split") == "validation"]
    assert [x["step"] for x in train_lines] == list(range(1, metrics["step"] + 1))
    assert train_lines[-1]["lr"] == 0.0  # the scheduler's planned total is the steps the two epochs took
    assert len(epoch_ends) == 2 and epoch_ends[-1]["step"] == metrics["step"]
    # 45 rows of 9-11 tokens at 96 tokens per batch: 8-10 rows a batch, so fewer steps than 4-row batches take
    assert metrics["step"] < 2 * 6


def test_multiclass_pairs_with_accumulation_and_carved_validation(tiny_bert, three_class_pairs, tmp_path):
    out = tmp_path / "run"
    metrics = _train_pairs(tiny_bert, three_class_pairs, out, batch_size=8)
    # 45 training rows (15 held out) → 6 batches → 3 optimizer steps per epoch
    assert metrics["step"] == 6
    assert sum(map(sum, metrics["validation"]["confusion_matrix"])) == 15
    assert metrics["validation"]["labels"] == ["opposite", "same", "unrelated"]
    assert set(metrics["validation"]["per_class"]) == {"opposite", "same", "unrelated"}
    train_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4, 5, 6]
    assert train_lines[-1]["lr"] == 0.0  # linear decay reaches zero at the last step
    run = lmtune.load(out)
    predictions = run.predict([("item 99 is good", "it is bad")])
    assert predictions[0]["label"] in {"opposite", "same", "unrelated"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "opposite", "1": "same", "2": "unrelated"}


def test_unreachable_hub_model_is_one_clear_line(tmp_path, three_class_pairs):
    expected = "could not load 'no-such-org/no-such-model' from the Hugging Face Hub"
    with pytest.raises(lmtune.LmtuneError, match=expected):
        lmtune.train({"model": "no-such-org/no-such-model",
                      "data": {"train": str(three_class_pairs), "text": "premise", "label": "relation"},
                      "output": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


def test_every_shipped_example_config_is_valid():
    from lmtune.tasks import TASKS
    from tests.conftest import REPO

    paths = sorted((REPO / "examples").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = lmtune.load_config(path)
        assert cfg.task in TASKS.names()


def test_runs_in_one_process_may_use_different_precisions(tiny_bert, three_class_pairs, tmp_path):
    for index, precision in enumerate(("fp32", "bf16", "fp32")):
        metrics = lmtune.train({
            "model": str(tiny_bert),
            "data": {"train": str(three_class_pairs), "text": "premise", "text_pair": "hypothesis",
                     "label": "relation"},
            "train": {"max_steps": 1, "batch_size": 8, "precision": precision},
            "output": str(tmp_path / f"run-{index}"),
        })
        assert metrics["precision"] == ("no" if precision == "fp32" else "bf16")
