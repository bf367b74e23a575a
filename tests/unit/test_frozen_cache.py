"""Frozen-layer caching computes what the uncached path computes, in memory and on disk."""

from __future__ import annotations

import json

import pytest

import lmtune
from tests.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert4(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert4"), layers=4)


@pytest.fixture
def data(tmp_path):
    words = ["good", "bad", "great", "awful", "fine", "poor", "superb", "dull"]
    rows = [{"text": " ".join(words[(i * k) % 8] for k in range(1, 2 + i % 9)), "label": (i * 7) % 2}
            for i in range(96)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(model, data, out, strategy, cache):
    return lmtune.train({
        "model": str(model), "data": {"train": str(data), "validation_split": 0.25},
        "strategy": {"name": strategy, **({"layers": 2} if strategy == "freeze" else {}), "cache": cache},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "precision": "fp32", "log_every": 1},
        "output": str(out),
    })


def _log(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("strategy", "cache"), [("freeze", "memory"), ("head", "memory"), ("freeze", "disk")])
def test_cached_training_matches_uncached(tiny_bert4, data, tmp_path, strategy, cache):
    plain = _train(tiny_bert4, data, tmp_path / "plain", strategy, "off")
    cached = _train(tiny_bert4, data, tmp_path / "cached", strategy, cache)
    assert cached["validation"]["loss"] == pytest.approx(plain["validation"]["loss"], abs=1e-4)
    assert cached["validation"]["accuracy"] == plain["validation"]["accuracy"]
    losses = [(x["step"], x["loss"]) for x in _log(tmp_path / "plain") if x["split"] == "train"]
    cached_losses = [(x["step"], x["loss"]) for x in _log(tmp_path / "cached") if x["split"] == "train"]
    assert [s for s, _ in losses] == [s for s, _ in cached_losses]
    for (_, a), (_, b) in zip(losses, cached_losses, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert cached["cache"] == cache and plain["cache"] == "off"
    assert not (tmp_path / "cached" / ".frozen-cache").exists()  # a disk cache is removed after the run
    # the saved model is complete and loads as usual
    assert lmtune.load(tmp_path / "cached").predict(["good great"])[0]["label"] in (0, 1)
