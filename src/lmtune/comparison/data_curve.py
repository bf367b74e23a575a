"""`lmtune diagnose RUN --data-curve`: retrain on growing fractions of the data; would more data help?

Each fraction is an ordinary run under ``RUN/data-curve/pNN`` (same config, same validation set,
``data.train_fraction`` set), so an interrupted curve resumes where it stopped; the full-data
point is the run itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.integrity import read_json_object

FRACTIONS = (0.1, 0.3, 1.0)
STILL_HELPS = 0.005
"""A gain above half a point (0.5% for lower-is-better metrics) per doubling means more data still helps."""


@dataclass
class CurvePoint:
    fraction: float
    train_rows: int
    value: float
    run_dir: str


@dataclass
class DataCurve:
    metric: str
    maximize: bool
    points: list[CurvePoint]
    gain_per_doubling: float
    """Metric change per doubling of the data, from the last two points (relative when lower is better)."""
    verdict: str

    def text(self) -> str:
        lines = [f"data curve ({self.metric} on the validation set):"]
        lines += [f"  {p.fraction:>5.0%} of the training data ({p.train_rows} rows): {p.value:.4f}"
                  for p in self.points]
        lines.append(self.verdict)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def data_curve(run_dir: str | Path, fractions: tuple[float, ...] = FRACTIONS) -> DataCurve:
    """Train on each fraction (the 100% point is the run itself) and judge the trend.

    Writes ``RUN/data_curve.json``.
    """
    from lmtune.inference import restore_task
    from lmtune.review import train_and_review
    from lmtune.tasks import deciding_metric

    path, cfg, task_state = rundir.read_run(run_dir)
    deciding = deciding_metric(restore_task(cfg, task_state, path), cfg.early_stopping)
    watch, maximize = deciding.name, deciding.maximize
    points = []
    for fraction in sorted(set(fractions)):
        if fraction >= 1.0 and cfg.data.train_fraction == 1.0:
            out, metrics = path, read_json_object(path / rundir.FINAL_METRICS, "the run's final metrics")
        else:
            out = path / "data-curve" / f"p{round(fraction * 100):02d}"
            data = dataclasses.replace(cfg.data, train_fraction=fraction * cfg.data.train_fraction)
            metrics = train_and_review(dataclasses.replace(cfg, output=str(out), data=data))
        points.append(CurvePoint(fraction, metrics.get("train_rows", -1), _value(metrics, watch), str(out)))
    gain, verdict = _judge(points, watch, maximize)
    curve = DataCurve(watch, maximize, points, gain, verdict)
    rundir.write_text_atomic(path / "data_curve.json", json.dumps(curve.to_dict(), indent=2))
    return curve


def _value(metrics: dict[str, Any], watch: str) -> float:
    """The run's final validation value of the watched metric (the restored best when restore_best)."""
    validation = metrics.get("validation") or {}
    return float(validation.get(watch, metrics.get(f"best_{watch}", math.nan)))


def _judge(points: list[CurvePoint], watch: str, maximize: bool) -> tuple[float, str]:
    if len(points) < 2:
        return math.nan, "a curve needs at least two fractions"
    a, b = points[-2], points[-1]
    doublings = math.log2(b.fraction / a.fraction)
    change = (b.value - a.value) if maximize else (a.value - b.value) / max(abs(a.value), 1e-9)
    gain = change / doublings
    unit = "" if maximize else " (relative)"
    trend = f"going from {a.fraction:.0%} to {b.fraction:.0%} of the data changed {watch} by {b.value - a.value:+.4f}"
    if gain > STILL_HELPS:
        return gain, (f"more data is likely to help: {trend}, about {gain:+.4f}{unit} per doubling; "
                      f"doubling the data would plausibly give another {gain:+.4f}{unit}")
    return gain, (f"more data is unlikely to help much: {trend}, {gain:+.4f}{unit} per doubling "
                  "(the curve has flattened); look at the model, strategy or regularization instead")
