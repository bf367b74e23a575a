"""`lmtune runs [DIR]`: the run directories under a folder, with task, model, strategy, status, best metric
and age, read from what each run wrote (nothing is loaded)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.config import EarlyStoppingConfig
from lmtune.runlock import live_holder
from lmtune.tasks import TASKS, deciding_metric

DEPTH = 3
"""How deep to look: DIR/run, DIR/comparison/trials/run."""


def list_runs(folder: str | Path) -> list[dict[str, Any]]:
    root = Path(folder)
    if not root.is_dir():
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"runs: {root} is not a folder")
    return [describe(path) for path in sorted(_run_dirs(root, DEPTH))]


def _run_dirs(folder: Path, depth: int) -> list[Path]:
    if (folder / rundir.CONFIG).is_file():
        return [folder]
    if depth == 0:
        return []
    found = []
    for child in folder.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            found += _run_dirs(child, depth - 1)
    return found


def describe(path: Path) -> dict[str, Any]:
    """One run: where, what, and how it stands."""
    out: dict[str, Any] = {"run": str(path), "task": None, "model": None, "strategy": None}
    try:
        import yaml

        config = yaml.safe_load((path / rundir.CONFIG).read_text(encoding="utf-8"))
        out.update(task=config["task"], model=config["model"], strategy=config["strategy"]["name"])
    except Exception:  # noqa: BLE001 - a damaged run is listed as such, not skipped
        out["status"] = "damaged"
        return out
    out["status"] = _status(path)
    out["metric"], out["best"] = _best(path, out["task"], config.get("early_stopping") or {})
    activity = [p.stat().st_mtime for p in (path / "metrics.jsonl", path / rundir.FINAL_METRICS) if p.is_file()]
    out["age_s"] = round(time.time() - max(activity), 1) if activity else None
    return out


def _status(path: Path) -> str:
    if live_holder(path) is not None:
        return "running"
    if (path / rundir.FINAL_METRICS).is_file() and (path / rundir.MODEL).is_dir():
        return "finished"
    try:
        return json.loads((path / rundir.STATUS).read_text(encoding="utf-8"))["status"]
    except Exception:  # noqa: BLE001 - no record of why it stopped: it was killed without warning
        return "interrupted"


def _best(path: Path, task: str, early_stopping: dict[str, Any]) -> tuple[str | None, float | None]:
    """The run's deciding validation metric (`lmtune.tasks.deciding_metric`): the best value logged."""
    if TASKS.check(task) is not None:
        return None, None
    try:
        deciding = deciding_metric(TASKS.get(task), EarlyStoppingConfig(
            metric=early_stopping.get("metric"), mode=early_stopping.get("mode", "auto")))
    except Exception:  # noqa: BLE001 - a damaged config section leaves the metric blank
        return None, None
    metric = deciding.metric
    values = []
    try:
        from lmtune.rundir import read_log

        values = [r[metric.name] for r in read_log(path) if r.get("split") == "validation"
                  and isinstance(r.get(metric.name), (int, float))]
    except Exception:  # noqa: BLE001, S110 - a damaged log leaves the metric blank
        pass
    if not values:
        return metric.name, None
    return metric.name, round(max(values) if deciding.maximize else min(values), 4)


def table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no run directories found"
    rows = [["run", "task", "model", "strategy", "status", "best", "age"]]
    for run in runs:
        best = f"{run.get('metric')} {run['best']}" if run.get("best") is not None else "-"
        rows.append([run["run"], str(run["task"]), _short(str(run["model"])), str(run["strategy"]), run["status"],
                     best, _age(run.get("age_s"))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
