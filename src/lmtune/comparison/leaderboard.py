"""Rank the strategies of a comparison and name a winner by a stated rule."""

from __future__ import annotations

import csv
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmtune.rundir import read_log
from lmtune.tasks.base import Metric


def rule(noise_floor: float, secondary: Metric | None = None) -> str:
    """The winner rule, stated with the metric's noise floor (its declared smallest meaningful difference)."""
    then = f"the best {secondary.name}, then " if secondary else ""
    return ("winner: among candidates whose mean is within noise of the best (best mean - max(std_best + std, "
            f"{noise_floor:g})), the one with the fewest trainable parameters (then {then}the least wall time)")


@dataclass
class Row:
    strategy: str
    """The candidate: a strategy, with the settings varied for it (``lora+loss=ipo``)."""
    status: str
    """complete, or 'pruned at step N'."""
    mean: float | None
    std: float | None
    seeds: int
    wall_seconds: float | None
    peak_rss_mib: float | None
    trainable_parameters: int | None
    model_bytes: int | None
    train_val_gap: float | None
    """Validation loss minus the last logged training loss (positive: validation is worse)."""
    run_dir: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    secondary: float | None = None
    """Mean of the task's tie-breaking metric (`Task.secondary_metric`), when it declares one."""


@dataclass
class Leaderboard:
    metric: str
    rows: list[Row]
    winner: str | None
    rule: str

    def text(self) -> str:
        """The leaderboard as an aligned text table, with the winner and the rule."""
        width = max(8, *(len(r.strategy) for r in self.rows))
        head = f"{'strategy':<{width}} {self.metric + ' (mean ± std)':>24} {'seeds':>5} {'wall s':>8} " \
               f"{'peak MiB':>9} {'trainable':>11} {'saved MB':>9} {'gap':>7}  status"
        lines = [head]
        for r in self.rows:
            score = f"{r.mean:.4f} ± {r.std:.4f}" if r.mean is not None else "-"
            lines.append(
                f"{r.strategy:<{width}} {score:>24} {r.seeds:>5} {_num(r.wall_seconds, '.0f'):>8} "
                f"{_num(r.peak_rss_mib, '.0f'):>9} {_num(r.trainable_parameters, ','):>11} "
                f"{_num(r.model_bytes and r.model_bytes / 1e6, '.1f'):>9} {_num(r.train_val_gap, '+.3f'):>7}  "
                f"{r.status}"
            )
        winner = next((r for r in self.rows if r.strategy == self.winner), None)
        lines.append(f"winner: {self.winner} ({winner.run_dir})" if winner else "winner: none (no trial completed)")
        lines.append(self.rule)
        return "\n".join(lines)


def build_leaderboard(study: Any, strategies: list[str], metric: Metric,
                      secondary: Metric | None = None) -> Leaderboard:
    """One row per candidate (a strategy with its varied settings; its best tuned settings), ranked by mean
    ``metric`` then ``secondary``; pruned ones last.

    Means closer than the metric's ``min_delta`` (or the seeds' spread) count as ties."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    maximize = study.direction.name == "MAXIMIZE"
    rows = []
    for strategy in strategies:
        mine = [t for t in trials if t.user_attrs.get("candidate", t.user_attrs.get("strategy")) == strategy]
        complete = [t for t in mine if t.state == TrialState.COMPLETE]
        if complete:
            rows.append(_complete_row(strategy, complete, maximize, secondary))
        elif any(t.state == TrialState.PRUNED for t in mine):
            pruned = max((t for t in mine if t.state == TrialState.PRUNED), key=lambda t: len(t.intermediate_values))
            step = pruned.user_attrs.get("pruned_at_step")
            rows.append(Row(strategy, f"pruned at step {step}", None, None, 0, pruned.user_attrs.get("wall_seconds"),
                            pruned.user_attrs.get("peak_rss_mib"), None, None, None, pruned.user_attrs.get("run_dir")))
        else:
            error = next((t.user_attrs["error"] for t in mine if "error" in t.user_attrs), None)
            status = f"refused: {error}" if error else "not run"
            rows.append(Row(strategy, status, None, None, 0, None, None, None, None, None, None))
    sign, tie = 1 if maximize else -1, 1 if secondary is None or secondary.greater_is_better else -1
    rows.sort(key=lambda r: (r.mean is None, -sign * (r.mean or 0), -tie * (r.secondary or 0)))
    return Leaderboard(metric.name, rows, _winner(rows, maximize, metric.min_delta, tie),
                       rule(metric.min_delta, secondary))


def write_leaderboard(board: Leaderboard, root: Path) -> None:
    """leaderboard.csv, leaderboard.json and a ``winner`` link to the winning run directory."""
    with (root / "leaderboard.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [k for k in asdict(board.rows[0]) if k != "settings"] + ["settings"])
        writer.writeheader()
        for row in board.rows:
            writer.writerow({**asdict(row), "settings": json.dumps(row.settings)})
    (root / "leaderboard.json").write_text(json.dumps(
        {"metric": board.metric, "winner": board.winner, "rule": board.rule, "rows": [asdict(r) for r in board.rows]},
        indent=2,
    ))
    link = root / "winner"
    winner = next((r for r in board.rows if r.strategy == board.winner), None)
    if link.is_symlink() or link.exists():
        link.unlink()
    if winner and winner.run_dir:
        os.symlink(os.path.relpath(winner.run_dir, root), link)


def _complete_row(strategy: str, complete: list, maximize: bool, secondary: Metric | None) -> Row:
    by_settings: dict[tuple, list] = {}
    for trial in complete:
        by_settings.setdefault((trial.user_attrs.get("variant"), tuple(sorted(trial.params.items()))), []).append(trial)
    choose = max if maximize else min
    group = choose(by_settings.values(), key=lambda ts: statistics.mean(t.value for t in ts))
    values = [t.value for t in group]
    best = choose(group, key=lambda t: t.value)
    attrs = best.user_attrs
    return Row(
        strategy, "complete", round(statistics.mean(values), 6),
        round(statistics.stdev(values), 6) if len(values) > 1 else 0.0, len(values),
        round(statistics.mean(t.user_attrs.get("wall_seconds", 0) for t in group), 1),
        max(t.user_attrs.get("peak_rss_mib", 0) for t in group), attrs.get("trainable_parameters"),
        attrs.get("model_bytes"), _gap(attrs), attrs.get("run_dir"), dict(best.params),
        _mean_of(group, secondary.name) if secondary else None,
    )


def _mean_of(trials: list, name: str) -> float | None:
    values = [t.user_attrs.get("validation", {}).get(name) for t in trials]
    return round(statistics.mean(values), 6) if values and None not in values else None


def _gap(attrs: dict) -> float | None:
    run_dir = attrs.get("run_dir")
    validation_loss = attrs.get("validation", {}).get("loss")
    if not run_dir or validation_loss is None:
        return None
    train = [x["loss"] for x in read_log(Path(run_dir)) if x.get("split") == "train"]
    return round(validation_loss - train[-1], 4) if train else None


def _winner(rows: list[Row], maximize: bool, noise_floor: float, tie: int = 1) -> str | None:
    done = [r for r in rows if r.mean is not None]
    if not done:
        return None
    sign = 1 if maximize else -1
    best = max(done, key=lambda r: sign * r.mean)
    close = [r for r in done if sign * (best.mean - r.mean) <= max(best.std + r.std, noise_floor)]
    fewest = min(close, key=lambda r: (r.trainable_parameters or 0, -tie * (r.secondary or 0), r.wall_seconds or 0))
    return fewest.strategy


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
