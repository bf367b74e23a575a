"""`lmtune merge RUN RUN... --out NEW`: LoRA runs of one base merged into a new run, scored against its parents.

Each parent's LoRA update of a layer is its delta weight (B·A scaled, from PEFT's own `get_delta_weight`). The
deltas of a layer are combined by PEFT's merge functions: ``linear`` (task arithmetic: the weighted sum), ``ties``
(trim each to its largest ``density`` share, elect a sign per entry, average those that agree) or ``dare_linear`` /
``dare_ties`` (drop a random ``1 - density`` share and rescale the rest, then sum or TIES-merge; seeded). They are
combined on the full delta matrices, not on the A and B factors separately (PEFT's ``add_weighted_adapter`` does
the latter for its non-SVD types, which adds cross terms between parents), so ``linear`` is exactly the weighted
sum. Modules trained whole beside the adapters (a classifier head, resized embeddings) are not LoRA: they are
averaged with the same weights. The merged run holds whole weights (base + combined deltas).

Then every model (each parent, the merge) is evaluated on every parent's validation set with the task's deciding
metric, so a merge is judged by what it keeps of each parent. ``NEW/merge.json`` records methods, weights and
scores; ``NEW`` is an ordinary finished run (predict, eval, serve, export, explain).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lmtune import rundir
from lmtune.errors import LmtuneError
from lmtune.inference import LoadedRun, load
from lmtune.integrity import staged_folder
from lmtune.strategies.lora import adapter_base
from lmtune.strategies.qlora import is_qlora_adapter
from lmtune.tasks import deciding_metric

METHODS = ("linear", "ties", "dare_linear", "dare_ties")
MERGE = "merge.json"
log = logging.getLogger("lmtune")


def merge_runs(runs: list[str | Path], out: str | Path, method: str = "linear", weights: list[float] | None = None,
               density: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Merge LoRA ``runs`` of one base into the run directory ``out``; returns (and writes to ``out/merge.json``)
    the settings and the score table.

    Raises:
        LmtuneError: fewer than two runs, a run that is not a LoRA run, runs of different bases, tasks or labels,
            a bad method/weight/density, or an ``out`` that is not empty.
    """
    weights = _check_settings(runs, method, weights, density)
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LmtuneError(f"--out: {target} exists and is not an empty directory")
    parents = [load(run) for run in runs]
    _check_compatible(parents)
    validation = [_validation(run) for run in parents]
    # each parent is scored before the merge takes the first one's model apart
    scores = {run.run_dir.name: [run.evaluate(table) for table in validation] for run in parents}
    log.info("merge: %s of %d LoRA runs (weights %s)", method, len(parents), ", ".join(f"{w:g}" for w in weights))
    first = parents[0]
    model = _merged_model(parents, method, weights, density, seed)
    settings = {"parents": [str(p.run_dir.resolve()) for p in parents], "method": method, "weights": weights,
                "density": density if method != "linear" else None, "seed": seed}
    with staged_folder(target) as tmp:
        rundir.write_header(tmp, replace(first.config, output=str(target.resolve())),
                            {**first.task.state(), "merged_from": settings["parents"]})
        model.save_pretrained(tmp / rundir.MODEL)
        first.tokenizer.save_pretrained(tmp / rundir.MODEL)
        (tmp / rundir.FINAL_METRICS).write_text(json.dumps({"merged": True}))
    del parents, model, first
    merged = load(target)
    scores["merged"] = [merged.evaluate(table) for table in validation]
    table = _score_table(merged, validation, scores)
    result = {**settings, "metric": table["metric"], "scores": table["rows"]}
    rundir.write_text_atomic(target / MERGE, json.dumps(result, indent=2))
    rundir.write_text_atomic(target / rundir.FINAL_METRICS, json.dumps(_final_metrics(table, merged.run_dir)))
    return result


# ---- checks -----------------------------------------------------------------------------------------------

def _check_settings(runs: list, method: str, weights: list[float] | None, density: float) -> list[float]:
    if len(runs) < 2:
        raise LmtuneError("merge: give at least two LoRA runs of one base")
    if method not in METHODS:
        raise LmtuneError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    weights = list(weights) if weights is not None else [1.0 / len(runs)] * len(runs)
    if len(weights) != len(runs) or not all(isinstance(w, (int, float)) and w > 0 for w in weights):
        raise LmtuneError(f"--weights: {len(runs)} numbers > 0 expected (one per run), got {weights}")
    if not 0 < density <= 1:
        raise LmtuneError(f"--density: {density} must be in (0, 1]")
    return [float(w) for w in weights]


def _check_compatible(parents: list[LoadedRun]) -> None:
    from lmtune.evaluation.reference import has_adapters

    for run in parents:
        if not has_adapters(run.model):
            raise LmtuneError(f"merge: {run.run_dir} is not a LoRA run (its model holds whole weights); merging "
                              "takes runs trained with strategy.name=lora")
        if is_qlora_adapter(run.run_dir / rundir.MODEL):
            raise LmtuneError(f"merge: {run.run_dir} is a QLoRA run (its base is 4-bit); merging takes LoRA runs "
                              "(strategy.name=lora), whose updates add to full-precision weights")
    first = parents[0]
    for run in parents[1:]:
        if run.config.task != first.config.task:
            raise LmtuneError(f"merge: {run.run_dir} is a {run.config.task} run and {first.run_dir} a "
                              f"{first.config.task} run; merged runs share one task")
        if _base(run) != _base(first):
            raise LmtuneError(f"merge: {run.run_dir} was tuned from {_base(run)} and {first.run_dir} from "
                              f"{_base(first)}; merged runs share one base model")
        if first.task.capabilities.class_labels and run.task.label_names() != first.task.label_names():
            raise LmtuneError(f"merge: {run.run_dir} has labels {run.task.label_names()} and {first.run_dir} "
                              f"{first.task.label_names()}; merged classifiers need the same labels")


def _base(run: LoadedRun) -> str:
    return adapter_base(run.run_dir / rundir.MODEL)


# ---- merging ----------------------------------------------------------------------------------------------

def _merged_model(parents: list[LoadedRun], method: str, weights: list[float], density: float,
                  seed: int) -> torch.nn.Module:
    """The first parent's model with every parent's adapter loaded beside its own, combined into whole weights."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from lmtune.models import bare_model

    model = bare_model(parents[0].model).float()
    names = [model.active_adapter]
    for i, run in enumerate(parents[1:], 1):
        model.load_adapter(str(run.run_dir / rundir.MODEL), adapter_name=f"parent{i}")
        names.append(f"parent{i}")
    generator = torch.Generator().manual_seed(seed)
    deltas: dict[str, torch.Tensor] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                parts = [module.get_delta_weight(name).float() for name in names]
                deltas[module_name] = _combine(parts, method, weights, density, generator)
            elif isinstance(module, ModulesToSaveWrapper):
                states = [module.modules_to_save[name].state_dict() for name in names]
                heads[module_name] = {key: sum(w * s[key].float() for w, s in zip(weights, states, strict=True))
                                      / sum(weights) for key in states[0]}
        base = model.unload()  # the base as loaded: LoRA layers out, wrapped modules back to their originals
        for module_name, delta in deltas.items():
            base.get_submodule(_plain(module_name)).weight += delta.to(base.dtype)
        for module_name, state in heads.items():
            base.get_submodule(_plain(module_name)).load_state_dict(state)
    return base.eval()


def _combine(parts: list[torch.Tensor], method: str, weights: list[float], density: float,
             generator: torch.Generator) -> torch.Tensor:
    from peft.utils import merge_utils

    w = torch.tensor(weights, dtype=parts[0].dtype)
    if method == "linear":
        return merge_utils.task_arithmetic(parts, w)
    if method == "ties":
        return merge_utils.ties(parts, w, density, majority_sign_method="total")
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))  # DARE's drops, seeded
    try:
        if method == "dare_linear":
            return merge_utils.dare_linear(parts, w, density)
        return merge_utils.dare_ties(parts, w, density, majority_sign_method="total")
    finally:
        torch.random.set_rng_state(state)


def _plain(name: str) -> str:
    """A module's name in the PEFT wrapper, as it is in the bare transformers model."""
    return name.removeprefix("base_model.model.")


# ---- scoring ----------------------------------------------------------------------------------------------

def _validation(run: LoadedRun) -> Any:
    """The run's validation rows (its training rows where it has none), as it was validated on."""
    from lmtune.data.splits import load_tables

    tables = load_tables(run.config.data, run.task)
    return (tables.get("validation") or tables["train"]).head(run.config.data.max_eval_samples)


def _score_table(merged: LoadedRun, validation: list[Any], scores: dict[str, list[dict]]) -> dict[str, Any]:
    """Per parent's validation set: every model's deciding metric (and all its metrics)."""
    metric = deciding_metric(merged.task, merged.config.early_stopping)
    parents = [name for name in scores if name != "merged"]
    rows = []
    for i, table in enumerate(validation):
        rows.append({"validation": str(table.source), "parent": parents[i],
                     metric.name: {name: found[i].get(metric.name) for name, found in scores.items()},
                     "all": {name: {k: v for k, v in found[i].items() if isinstance(v, (int, float))}
                             for name, found in scores.items()}})
    return {"metric": {"name": metric.name, "higher_is_better": metric.maximize}, "rows": rows}


def _final_metrics(scores: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The merged run's metrics.json: its scores on the first parent's validation set, as a trained run keeps
    them (``validation_<metric>``), and the mean of the deciding metric over every parent's set."""
    name = scores["metric"]["name"]
    first = scores["rows"][0]["all"]["merged"]
    values = [row[name]["merged"] for row in scores["rows"] if isinstance(row[name]["merged"], (int, float))]
    out = {f"validation_{k}": v for k, v in first.items()}
    out.update(merged=True, merge_file=str(run_dir / MERGE))
    if values:
        out[f"mean_parent_validation_{name}"] = sum(values) / len(values)
    return out
