"""`lmtune diagnose RUN --data-curve`: retrains on fractions of the data, resumably, and judges the trend."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.cli.main import main
from lmtune.comparison.data_curve import CurvePoint, _judge
from tests.conftest import make_tiny_bert


def test_data_curve_trains_each_fraction_once_and_writes_its_verdict(tmp_path, capsys):
    tiny = make_tiny_bert(tmp_path / "tiny", layers=1)
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing {i}", "label": i % 2} for i in range(80)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    lmtune.train({"model": str(tiny), "data": {"train": str(tmp_path / "d.jsonl")}, "output": str(run),
                  "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "precision": "fp32"}})
    assert main(["diagnose", str(run), "--data-curve", "--json"]) == 0
    curve = json.loads(capsys.readouterr().out)["data_curve"]
    assert [p["fraction"] for p in curve["points"]] == [0.1, 0.3, 1.0]
    assert [p["train_rows"] for p in curve["points"]] == [7, 22, 72]
    assert (run / "data-curve" / "p10" / "model").is_dir() and (run / "data-curve" / "p30" / "model").is_dir()
    points = [CurvePoint(p["fraction"], p["train_rows"], p["value"], "") for p in curve["points"]]
    gain, verdict = _judge(points, "accuracy", maximize=True)  # the verdict follows the rule on these points
    assert curve["verdict"] == verdict and curve["gain_per_doubling"] == pytest.approx(gain, abs=1e-4)
    assert json.loads((run / "data_curve.json").read_text()) == curve
    stamp = (run / "data-curve" / "p10" / "metrics.json").stat().st_mtime_ns
    assert main(["diagnose", str(run), "--data-curve"]) == 0  # finished fractions are not retrained
    assert (run / "data-curve" / "p10" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("values", "helps"), [((0.70, 0.78, 0.85), True), ((0.80, 0.85, 0.851), False)])
def test_verdict_follows_the_gain_per_doubling(values, helps):
    points = [CurvePoint(f, 0, v, "") for f, v in zip((0.1, 0.3, 1.0), values, strict=True)]
    gain, verdict = _judge(points, "accuracy", maximize=True)
    assert verdict.startswith("more data is likely") == helps
    assert gain == pytest.approx((values[2] - values[1]) / 1.737, rel=1e-3)
