"""The *forgetting* finding: a benchmark the run was scored on before and after tuning (`lmtune eval RUN
--harness ...`, ``RUN/harness.json``) got worse by more than the standard error of its difference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.config import RunConfig
from lmtune.diagnosis.findings import Finding, Suggestion
from lmtune.integrity import FileCheckError, read_json_object


def forgetting_findings(run_dir: Path, cfg: RunConfig) -> list[Finding]:
    """One finding naming every metric that dropped beyond its standard error; none without harness results."""
    path = run_dir / rundir.HARNESS
    if not path.is_file():
        return []
    try:
        tasks = read_json_object(path, "the harness results", required=("tasks",))["tasks"]
    except FileCheckError as err:
        return [Finding("unknown", "the harness results could not be read", [str(err)])]
    drops = [line for name, entry in sorted(tasks.items()) if isinstance(entry, dict)
             for line in _drops(name, entry.get("metrics", {}))]
    if not drops:
        return []
    return [Finding("forgetting", "tuning cost the model on benchmarks it was not tuned for", drops,
                    _suggestions(cfg))]


def _drops(task: str, metrics: dict[str, Any]) -> list[str]:
    out = []
    for metric, row in metrics.items():
        difference, se = row.get("difference"), row.get("difference_se")
        if not isinstance(difference, (int, float)) or not isinstance(se, (int, float)) or se <= 0:
            continue
        worse = -difference if row.get("higher_is_better", True) else difference
        if worse > se:
            out.append(f"{task} {metric}: {row['before']:.4f} before tuning, {row['after']:.4f} after "
                       f"({difference:+.4f} ± {se:.4f}, {worse / se:.1f} standard errors worse)")
    return out


def _suggestions(cfg: RunConfig) -> list[Suggestion]:
    lr = cfg.train.lr or 0.0
    out = [Suggestion("take smaller steps away from the starting weights", [f"train.lr={lr / 3:.2g}"])]
    if cfg.strategy.name != "lora":
        out.append(Suggestion("change fewer weights: LoRA keeps the base as it was", ["strategy.name=lora"]))
    if cfg.train.max_steps:
        out.append(Suggestion("train for fewer steps", [f"train.max_steps={max(1, cfg.train.max_steps // 2)}"]))
    else:
        out.append(Suggestion("train for fewer epochs", [f"train.epochs={max(1, cfg.train.epochs // 2)}"]))
    return out
