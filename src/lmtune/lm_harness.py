"""`lmtune eval RUN --harness TASK[,TASK...]`: lm-evaluation-harness tasks on the run's model and on the model it
started from, side by side: did tuning cost the model what it knew before?

The harness (the ``lm_eval`` package, the field's standard) runs its own tasks on a transformers model object: the
run's model as lmtune loaded it (adapters applied) is "after"; "before" is the same model with its adapters
switched off (a LoRA run: no second copy of the weights), or the model the run's config starts from, loaded for
the purpose. A task is a harness task name (stock tasks fetch their data from the Hub) or a path to a task YAML
file in the harness's own format (local tasks; `examples/harness/` has two that read the shared data).

Each difference comes with its standard error: paired over the same documents where the metric is a mean of
per-document scores (accuracy), else from the two runs' own standard errors as independent (perplexity). The
results go to ``RUN/harness.json``, which the report shows and the diagnosis reads (its *forgetting* finding).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.errors import LmtuneError
from lmtune.inference import LoadedRun, load, restore_task, starting_model
from lmtune.tasks import task_names_with

log = logging.getLogger("lmtune")

def evaluate_harness(run_dir: str | Path, tasks: list[str], limit: int | None = None,
                     batch_size: int | None = None) -> dict[str, Any]:
    """Run harness ``tasks`` before and after tuning; returns (and records in ``RUN/harness.json``) per task and
    metric the two values, their difference and its standard error.

    Raises:
        LmtuneError: the run does not generate text, the harness is not installed, a task is unknown or its
            data cannot be loaded.
    """
    path, cfg, task_state = rundir.read_run(run_dir)
    if not restore_task(cfg, task_state, path).capabilities.generates:
        raise LmtuneError(f"--harness: {path} is a {cfg.task} run; the harness evaluates language models "
                          f"({task_names_with('generates')} runs)")
    names, manager = _tasks(tasks)
    run = load(run_dir)
    size = batch_size or run.config.train.eval_batch
    log.info("harness: %s on the run's model (after)", ", ".join(names))
    after = _scores(run.model, run.tokenizer, names, manager, limit, size)
    before, note = None, ""
    with starting_model(run) as start:
        if isinstance(start, str):
            note = start
        else:
            log.info("harness: %s on the model it started from (before)", ", ".join(names))
            before = _scores(start, run.tokenizer, names, manager, limit, size)
    result = {"tasks": {name: _side_by_side(before, after, name) for name in names}, "limit": limit,
              "before": note or "the model the run started from"}
    _record(run, result)
    return result


# ---- tasks ------------------------------------------------------------------------------------------------

def _tasks(specs: list[str]) -> tuple[list[str], Any]:
    """Task names (a YAML path gives the name its file declares) and a task manager that knows the local files."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmtuneError("--harness needs lm-evaluation-harness: pip install lm_eval") from None
    names, folders = [], []
    for spec in specs:
        path = Path(spec)
        if path.suffix in (".yaml", ".yml"):
            names.append(_declared_name(path))
            folders.append(str(path.resolve().parent))
        else:
            names.append(spec)
    with _quiet():  # the harness's own tasks take seconds to index: only when a task is named, not a file
        manager = TaskManager(include_path=sorted(set(folders)) or None,
                              include_defaults=len(folders) < len(specs))
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise LmtuneError(f"--harness: no harness task named {', '.join(unknown)} (give a harness task name, or "
                          "the path of a task YAML file)")
    return names, manager


def _declared_name(path: Path) -> str:
    if not path.is_file():
        raise LmtuneError(f"--harness: {path} does not exist; expected a harness task name or task YAML file")
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "task" and not line.startswith((" ", "\t")) and value.strip():
            return value.strip().strip("'\"")
    raise LmtuneError(f"--harness: {path} has no top-level 'task:' name; expected a harness task YAML file")


# ---- running the harness ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """The harness and datasets log and draw progress bars on stderr for every step; lmtune says what runs."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets", "huggingface_hub", "fsspec")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    # the harness bootstraps standard errors (perplexity) in a forked multiprocessing pool; forked from a process
    # with running threads (torch's, a server's, a test runner's) its workers can hang for ever: in-process, then
    was = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if was is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = was


def _scores(model: Any, tokenizer: Any, names: list[str], manager: Any, limit: int | None,
            batch_size: int) -> dict[str, Any]:
    """The harness's results and per-document scores of ``model`` on ``names``."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from lmtune.evaluation.reference import has_adapters
    from lmtune.models import bare_model

    # the harness takes a transformers model: under PEFT, the one holding the LoRA layers (which stay switched as
    # the caller set them: on for "after", off for "before")
    inner = bare_model(model).base_model.model if has_adapters(model) else bare_model(model)
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            lm = HFLM(pretrained=inner, tokenizer=tokenizer, batch_size=batch_size, device=str(inner.device))
            out = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, bootstrap_iters=1000,
                                  log_samples=True, verbosity="ERROR")
    except LmtuneError:
        raise
    except Exception as err:  # noqa: BLE001 - the harness raises many kinds (data not found, offline, bad YAML)
        raise LmtuneError(f"--harness {','.join(names)}: the harness failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:240] if str(err) else 'no message'})") from None
    return {"results": out["results"], "samples": out.get("samples", {}), "configs": out.get("configs", {})}


# ---- comparing --------------------------------------------------------------------------------------------

def _side_by_side(before: dict[str, Any] | None, after: dict[str, Any], name: str) -> dict[str, Any]:
    """Per metric: before, after, difference, its standard error, and whether higher is better."""
    results = after["results"][name]
    declared = _declared_metrics(after, name)
    metrics = {}
    for key, value in results.items():
        metric, _, filt = key.partition(",")
        if not isinstance(value, (int, float)) or metric.endswith("_stderr") or not filt:
            continue
        se_after = _number(results.get(f"{metric}_stderr,{filt}"))
        aggregation, higher = declared.get(metric, ("mean", True))
        row = {"after": value, "after_se": se_after, "higher_is_better": higher}
        if before is not None:
            old = before["results"][name]
            se_before = _number(old.get(f"{metric}_stderr,{filt}"))
            paired = (_paired_se(before["samples"].get(name), after["samples"].get(name), metric)
                      if aggregation == "mean" else None)
            independent = math.sqrt(se_before**2 + se_after**2) if None not in (se_before, se_after) else None
            row.update(before=old[key], before_se=se_before, difference=value - old[key],
                       difference_se=paired if paired is not None else independent,
                       se_kind="paired" if paired is not None else "independent")
        metrics[metric] = row
    return {"documents": results.get("sample_len") or len(after["samples"].get(name, [])), "metrics": metrics}


def _declared_metrics(scores: dict[str, Any], name: str) -> dict[str, tuple[str, bool]]:
    """Per metric of the task's config: (aggregation, higher is better); a per-document difference means
    something only for a metric aggregated by its mean."""
    config = scores["configs"].get(name, {})
    return {m["metric"]: (str(m.get("aggregation", "mean")), bool(m.get("higher_is_better", True)))
            for m in config.get("metric_list", []) if isinstance(m.get("metric"), str)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _paired_se(before: list[dict] | None, after: list[dict] | None, metric: str) -> float | None:
    """Standard error of the mean per-document difference, where both runs scored the same documents with a
    plain number (accuracy-like metrics); None otherwise (perplexity aggregates log-likelihoods)."""
    if not before or not after:
        return None
    old = {s["doc_id"]: s.get(metric) for s in before}
    pairs = [(old.get(s["doc_id"]), s.get(metric)) for s in after]
    if not pairs or any(not isinstance(a, (int, float)) or not isinstance(b, (int, float)) for a, b in pairs):
        return None
    diffs = [b - a for a, b in pairs]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(variance / len(diffs))


def _record(run: LoadedRun, result: dict[str, Any]) -> None:
    """Merge into ``RUN/harness.json``: a task run again replaces its own entry, others stay."""
    path = run.run_dir / rundir.HARNESS
    kept: dict[str, Any] = {}
    if path.is_file():
        try:
            kept = json.loads(path.read_text()).get("tasks", {})
        except (OSError, ValueError, AttributeError):
            kept = {}  # a damaged file is rewritten whole
    merged = {**result, "tasks": {**kept, **result["tasks"]}}
    rundir.write_text_atomic(path, json.dumps(merged, indent=2))
