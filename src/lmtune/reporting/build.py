"""`lmtune report RUN` → one self-contained HTML file (inline CSS, SVG and script; nothing fetched)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.integrity import FileCheckError, read_json, read_json_object
from lmtune.rundir import read_log
from lmtune.svg_charts import line_chart

log = logging.getLogger("lmtune")

REPORT = "report.html"
WORST_EXAMPLES = 10
EXPLAINED_PER_KIND = 2
"""Correct and wrong validation predictions explained in the report (each)."""

Section = Callable[["Context"], str | None]
"""A report section: HTML for this run, or None to leave it out."""


class Context:
    """What the sections read: the run's files, loaded once."""

    def __init__(self, run_dir: Path):
        from lmtune.inference import restore_task
        from lmtune.tasks import deciding_metric

        self.path, self.config, task_state = rundir.read_run(run_dir)
        self.task = restore_task(self.config, task_state, self.path)
        self.watch = deciding_metric(self.task, self.config.early_stopping).name
        self.log = read_log(self.path)
        self.final = _json(self.path / rundir.FINAL_METRICS) or {}
        self.versions = _json(self.path / rundir.VERSIONS) or {}
        self._run: Any = None
        self.diagnosis: Any = None
        """The run's `Diagnosis` (read or made by `write_report`)."""
        self._predictions: Any = False

    @property
    def run(self) -> Any:
        """The run's final model, loaded on first use."""
        if self._run is None:
            from lmtune.inference import load

            self._run = load(self.path)
        return self._run

    def validation_predictions(self) -> Scored | None:
        """The validation rows scored by the final model (tasks with class labels), or None."""
        if self._predictions is False:
            self._predictions = self._predict_validation()
        return self._predictions

    def _predict_validation(self) -> Scored | None:
        from lmtune.data.splits import load_tables
        from lmtune.evaluation import score_examples

        if not self.task.capabilities.class_labels:
            return None
        run = self.run
        table = load_tables(self.config.data, self.task)["validation"]
        examples = self.task.encode(table, run.tokenizer, self.config.data, self.config.train.max_length)
        records = score_examples(run.model, examples, self.task, self.config.train.eval_batch,
                                 run.tokenizer.pad_token_id, autocast=run.autocast(), bf16_cache=run.bf16_copies)
        losses = self.task.aggregate(records, examples, example_losses=True)["example_losses"]
        predictions = self.task.predictions(records, examples, len(table))
        return Scored(table, predictions, losses, [self.task.gold(ex) for ex in examples])


@dataclass
class Scored:
    """Validation rows under the final model: one prediction, loss and gold label per row."""

    table: Any
    predictions: list[dict[str, Any]]
    losses: list[float]
    gold: list[Any]

    def right(self, k: int) -> bool:
        return self.predictions[k]["label"] == self.gold[k]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of a finished run (diagnosing it first if needed); returns the file written."""
    from lmtune.diagnosis import DIAGNOSIS, diagnose

    context = Context(Path(run_dir))
    try:
        context.diagnosis = _read_diagnosis(context.path / DIAGNOSIS)
    except FileCheckError as err:  # derived from the run's own files, so made again rather than refused
        if context.path.joinpath(DIAGNOSIS).exists():
            log.warning("%s; diagnosing the run again", err)
        context.diagnosis = diagnose(context.path)
    body = []
    for title, section in SECTIONS:
        html = section(context)
        if html is not None:
            anchor = title.lower().replace(" ", "-")
            body.append(f'<section id="{anchor}"><h2>{escape(title)}</h2>{html}</section>')
    target = Path(out) if out else context.path / REPORT
    target.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text_atomic(target, _page(context, "".join(body)))
    return target


def _summary(c: Context) -> str:
    validation = c.final.get("validation", {})
    rows = [("task", c.config.task), ("model", c.config.model), ("strategy", c.config.strategy.name),
            ("steps", c.final.get("step")), (f"validation {c.watch}", validation.get(c.watch)),
            ("validation loss", validation.get("loss")), ("best step", c.final.get("best_step")),
            ("restored step", c.final.get("restored_step")), ("stopped early", c.final.get("stopped_early")),
            ("trainable parameters", c.final.get("trainable_parameters")),
            ("training samples/s", c.final.get("train_samples_per_s")), ("precision", c.final.get("precision"))]
    return _table(["", ""], [(k, _fmt(v)) for k, v in rows if v is not None])


def _curves(c: Context) -> str:
    def series(split: str, key: str) -> list[tuple[float, float]]:
        return [(x["step"], _float(x.get(key))) for x in c.log if x.get("split") == split and key in x]

    markers = {}
    if c.final.get("best_step") is not None:
        markers["best"] = c.final["best_step"]
    label, bounds = c.task.metric("loss").axis
    loss = line_chart({"training (running)": series("train", "loss"),
                       "training sample": series("train_sample", "loss"),
                       "validation": series("validation", "loss")},
                      "Loss", "optimizer step", label, markers, bounds)
    shown = _second_metric(c, series)
    label, bounds = c.task.metric(shown).axis  # the axis says the metric's declared scale
    metric = line_chart({"training sample": series("train_sample", shown),
                         "validation": series("validation", shown)},
                        shown.replace("_", " ").capitalize(), "optimizer step", label, markers, bounds)
    extra = [_group_chart(c, group, series, markers) for group in c.task.chart_groups]
    replies = {name.removeprefix("reply_").replace("_", " "): series("validation", name)
               for name in ("reply_exact_match", "reply_rougeL", "reply_judge")}
    if any(replies.values()):  # replies.samples: what the model generated, scored against the references
        extra.append(line_chart(replies, "Generated replies (validation sample)", "optimizer step", "percent",
                                markers, (0.0, 100.0)))
    note = ("<p>The training sample is a fixed set of training examples scored like validation (eval mode, no "
            "augmentation) at each evaluation: the distance between the two lines is the real train/validation "
            "gap.</p>")
    return f'<div class="charts">{loss}{metric}{"".join(extra)}</div>{note}'


def _group_chart(c: Context, group: tuple[str, ...], series: Any, markers: dict[str, float]) -> str:
    """One chart of several of the task's metrics (`Task.chart_groups`), validation and training sample."""
    lines = {f"{split.replace('_', ' ')}: {name.replace('_', ' ')}": series(split, name)
             for name in group for split in ("train_sample", "validation")}
    label, bounds = c.task.metric(group[0]).axis
    title = " and ".join(name.replace("_", " ") for name in group)
    return line_chart(lines, title[0].upper() + title[1:], "optimizer step", label, markers, bounds)


def _second_metric(c: Context, series: Any) -> str:
    """The watched metric; when that is the loss (already charted), the task's next logged metric
    (language models: perplexity)."""
    if c.watch != "loss":
        return c.watch
    return next((m for m in c.task.metric_names if m != "loss" and series("validation", m)), c.watch)


def _diagnosis(c: Context) -> str:
    diagnosis = c.diagnosis
    parts = [f'<p class="state state-{diagnosis.state.replace(" ", "-")}">{escape(diagnosis.state)}</p>']
    for finding in diagnosis.findings:
        parts.append(f'<div class="finding"><h3>{escape(finding.title)}</h3>')
        if finding.evidence:
            parts.append("<ul>" + "".join(f"<li>{escape(e)}</li>" for e in finding.evidence) + "</ul>")
        if finding.examples:
            keys = list(finding.examples[0])
            parts.append(_table(keys, [[_fmt(ex.get(k)) for k in keys] for ex in finding.examples]))
        for tip in finding.suggestions:
            paste = f' <code>{escape(" ".join(tip.overrides))}</code>' if tip.overrides else ""
            parts.append(f'<p class="tip">Try: {escape(tip.why)}{paste}</p>')
        parts.append("</div>")
    curve = _json(c.path / "data_curve.json")
    if curve:
        points = "".join(f"<li>{p['fraction']:.0%} of the data ({p['train_rows']} rows): {p['value']:.4f}</li>"
                         for p in curve["points"])
        parts.append(f'<div class="finding"><h3>Data curve ({escape(curve["metric"])})</h3><ul>{points}</ul>'
                     f'<p>{escape(curve["verdict"])}</p></div>')
    return "".join(parts)


def _classes(c: Context) -> str | None:
    validation = c.final.get("validation", {})
    matrix, labels = validation.get("confusion_matrix"), validation.get("labels")
    if not matrix or not labels:
        return None
    peak = max(max(row) for row in matrix) or 1
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{escape(str(x))}</th>" for x in labels) + "</tr>"
    body = "".join(
        f"<tr><th>{escape(str(labels[i]))}</th>"
        + "".join(f'<td class="cell" style="background: rgba(31,119,180,{0.08 + 0.8 * v / peak:.2f})">{v}</td>'
                  for v in row) + "</tr>"
        for i, row in enumerate(matrix)
    )
    confusion = f'<table class="confusion">{head}{body}</table>'
    per_class = validation.get("per_class", {})
    rows = [(name, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), m["support"])
            for name, m in per_class.items()]
    table = _table(["class", "precision", "recall", "F1", "support"], rows)
    return f"<h3>Confusion matrix (validation)</h3>{confusion}<h3>Per-class metrics (validation)</h3>{table}"


def _worst(c: Context) -> str | None:
    """The validation examples with the highest loss under the final model."""
    scored = c.validation_predictions()
    if scored is None:
        return None
    rows = []
    for k in sorted(range(len(scored.losses)), key=lambda k: -scored.losses[k])[:WORST_EXAMPLES]:
        prediction = scored.predictions[k]
        rows.append((scored.table.where(k), str(scored.table.rows[k].get(c.config.data.text)),
                     str(scored.gold[k]), str(prediction["label"]), _fmt(prediction["score"]),
                     _fmt(scored.losses[k])))
    return _table(["where", "text", "gold", "predicted", "confidence", "loss"], rows)


def _config(c: Context) -> str:
    text = (c.path / rundir.CONFIG).read_text(encoding="utf-8")  # checked when the run was read
    env = _table(["", ""], sorted(c.versions.items())) if c.versions else ""
    extra = [("processes", c.final.get("processes")), ("frozen-layer cache", c.final.get("cache"))]
    env += _table(["", ""], [(k, _fmt(v)) for k, v in extra if v is not None])
    return f"<h3>Resolved config</h3><pre>{escape(text)}</pre><h3>Environment</h3>{env}"


def _leaderboard(c: Context) -> str:
    """Slot: the strategy comparison this run belongs to (filled when the run is a `lmtune compare` trial)."""
    for candidate in (c.path / "leaderboard.json", c.path.parent.parent / "leaderboard.json"):
        board = _json(candidate)
        if board:
            rows = board.get("rows") or []
            if rows:
                keys = list(rows[0])
                head = (f"<p>Winner: <strong>{escape(str(board.get('winner')))}</strong> "
                        f"({escape(str(board.get('rule', '')))})</p>")
                return head + _table(keys, [[_fmt(r.get(k)) for k in keys] for r in rows])
    return '<p class="empty">No strategy comparison for this run: <code>lmtune compare</code> fills this section.</p>'


def _before_after(c: Context) -> str | None:
    """Benchmarks (lm-evaluation-harness) on the starting model and on the tuned one, with the differences."""
    harness = _json(c.path / rundir.HARNESS)
    if not harness or not isinstance(harness.get("tasks"), dict):
        return None
    rows = []
    for name, entry in sorted(harness["tasks"].items()):
        for metric, row in entry.get("metrics", {}).items():
            se = row.get("difference_se")
            change = "" if "difference" not in row else (
                f"{row['difference']:+.4f}" + (f" ± {se:.4f} ({row.get('se_kind', '')})" if se is not None else ""))
            better = "higher" if row.get("higher_is_better", True) else "lower"
            rows.append((name, metric, better, _fmt(row.get("before")), _fmt(row.get("after")), change))
    head = (f"<p>Before: {escape(str(harness.get('before', '')))}. "
            "Run by <code>lmtune eval RUN --harness TASKS</code>; a metric that got worse by more than its standard "
            "error is a <em>forgetting</em> finding in the diagnosis.</p>")
    return head + _table(["task", "metric", "better", "before", "after", "difference ± standard error"], rows)


def _explanations(c: Context) -> str | None:
    """Attention and attributions of sampled correct and wrong validation predictions."""
    import random

    from lmtune.explanation import Explainer
    from lmtune.explanation.render import SCRIPT, STYLE, fragment
    scored = c.validation_predictions()
    if not c.task.capabilities.explains or scored is None:
        return None
    table = scored.table
    rng = random.Random(c.config.train.seed)
    parts = []
    for title, wanted in (("Correct predictions", True), ("Wrong predictions", False)):
        pool = [k for k in range(len(scored.gold)) if scored.right(k) == wanted]
        chosen = sorted(rng.sample(pool, min(EXPLAINED_PER_KIND, len(pool))))
        if not chosen:
            continue
        explainer = Explainer(c.run, ("ig", "occlusion"), steps=32)
        rows = [table.rows[k] for k in chosen]
        explained = [explainer.explain(str(r.get(c.config.data.text)),
                                       str(r.get(c.config.data.text_pair)) if c.config.data.text_pair else None)
                     for r in rows]
        gold = ", ".join(str(scored.gold[k]) for k in chosen)
        parts.append(f"<h3>{title} (sampled; gold labels: {escape(gold)})</h3>"
                     + fragment(explained, "wrong" if not wanted else "right"))
    if not parts:
        return None
    intro = ("<p>Integrated Gradients and occlusion toward the predicted label, with the deletion test and the "
             "randomization check; choose a layer and head and hover a token to see where it attends. "
             "<code>lmtune explain RUN --text ...</code> explains any input.</p>")
    return f"<style>{STYLE}</style>{intro}{''.join(parts)}<script>{SCRIPT}</script>"


SECTIONS: list[tuple[str, Section]] = [
    ("Summary", _summary),
    ("Learning curves", _curves),
    ("Diagnosis", _diagnosis),
    ("Classes", _classes),
    ("Worst-predicted validation examples", _worst),
    ("Strategy comparison", _leaderboard),
    ("Before and after tuning (benchmarks)", _before_after),
    ("Explanations", _explanations),
    ("Config and environment", _config),
]
"""Report sections in page order; later features add theirs here."""


def _page(c: Context, body: str) -> str:
    title = f"lmtune report: {c.path.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style>
<script>window.onerror = function (m) {{ document.documentElement.setAttribute("data-error", String(m)); }};</script>
</head>
<body><header><h1>{escape(title)}</h1><p>{escape(str(c.path))}</p></header>
<main>{body}</main>
<script>{_SCRIPT}</script></body></html>
"""


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2327;
  background: #fafafa; }
header { background: #1d3557; color: #fff; padding: 14px 28px; }
header p { margin: 0; opacity: .8; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 28px 40px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 6px 20px 16px; margin: 18px 0; }
h1 { margin: 0; font-size: 22px; } h2 { font-size: 19px; } h3 { font-size: 16px; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
td.cell { text-align: center; min-width: 48px; }
pre { background: #f4f4f4; padding: 10px; overflow-x: auto; font-size: 13px; }
code { background: #eef; padding: 1px 5px; border-radius: 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart .grid { stroke: #eee; } .chart .axis { stroke: #888; } .chart .marker { stroke: #999; stroke-dasharray: 4 3; }
.chart text { font-size: 11px; fill: #444; } .chart .chart-title { font-size: 14px; font-weight: 600; }
.state { display: inline-block; padding: 4px 12px; border-radius: 4px; font-weight: 700; text-transform: uppercase;
  background: #e9ecef; }
.state-healthy { background: #d4edda; } .state-overfitting, .state-diverging { background: #f8d7da; }
.state-underfitting, .state-data-problem { background: #fff3cd; }
.finding { border-left: 3px solid #ccc; padding-left: 12px; margin: 10px 0; } .tip { margin: 4px 0; }
.empty { color: #777; font-style: italic; }
"""

_SCRIPT = """
(function () {
  // Mark the page as rendered once every chart has been laid out (checked by the browser test).
  var charts = document.querySelectorAll("svg.chart");
  var drawn = Array.prototype.filter.call(charts, function (svg) {
    var box = svg.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && svg.querySelectorAll("polyline.series").length > 0;
  }).length;
  document.body.setAttribute("data-charts", String(charts.length));
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
"""


def _table(headers: list[str], rows: list) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers) if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _read_diagnosis(path: Path) -> Any:
    from lmtune.diagnosis import Diagnosis

    try:
        return Diagnosis.from_dict(read_json_object(path, "a diagnosis", ["state", "findings"]))
    except (KeyError, TypeError, AttributeError):
        raise FileCheckError(path, "not a diagnosis written by lmtune") from None


def _json(path: Path) -> Any:
    """A JSON file of the run, or None when it is not there (yet); a damaged one is an error naming it."""
    return read_json(path) if path.exists() else None
