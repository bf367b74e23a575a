"""``lmtune compare``: run every strategy on the user's config and data, as ordinary run directories under
one comparison directory, scheduled and pruned by an Optuna study stored next to them (so an interrupted
comparison resumes, and several machines can share one study through ``--storage``)."""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig, config_to_dict, load_config
from lmtune.errors import LmtuneError
from lmtune.extras import check_storage
from lmtune.selection.leaderboard import Leaderboard, build_leaderboard, write_leaderboard
from lmtune.selection.space import TrialSpec, overrides_for, plan
from lmtune.tasks import TASKS
from lmtune.trackers import TrackingSession

log = logging.getLogger("lmtune")

STUDY = "lmtune-compare"
HEARTBEAT_S = 60


def compare(
    config: RunConfig,
    strategies: list[str],
    seeds: int = 1,
    trials: int = 1,
    budget: int | None = None,
    storage: str | None = None,
    out_dir: str | Path | None = None,
    prune: bool = True,
) -> Leaderboard:
    """Train each strategy (× seeds × tuned variants), rank them, and name a winner.

    Args:
        config: the user's run config (its data, model, task and training budget are shared).
        strategies: strategy names to compare.
        seeds: runs per configuration, for mean ± std.
        trials: settings per strategy: 1 runs the defaults; more adds tuned variants (lr, LoRA r, freeze k).
        budget: optimizer steps per trial (overrides the config's epochs).
        storage: an Optuna storage URL; default a SQLite file in the comparison directory.
        out_dir: comparison directory; default ``<config output>-compare``.
        prune: stop hopeless trials early with successive halving.

    Returns:
        The leaderboard, also written as leaderboard.csv / leaderboard.json, with the winner.
    """
    import optuna

    if storage is not None:
        check_storage(storage)  # a missing database driver is one line, before anything is written
    # heartbeats and stale-trial handling are marked experimental by Optuna; their warnings are noise here
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    root = Path(out_dir) if out_dir else Path(f"{config.output}-compare")
    root.mkdir(parents=True, exist_ok=True)
    for name in strategies:
        load_config({**config_to_dict(config), "strategy": {"name": name}})  # a bad name fails before any work
    base = replace(config, train=replace(config.train, max_steps=budget or config.train.max_steps))
    base = _with_eval_points(base)
    study = _open_study(base, storage, root, prune)
    specs = plan(strategies, [base.train.seed + i for i in range(seeds)], trials)
    # the comparison is the parent record in the experiment trackers, each trial a child of it
    trackers = TrackingSession(base, root, header=None).start()
    try:
        for number, spec in enumerate(specs, start=1):
            if _settled(study, spec.key):
                continue
            log.info("[%d/%d] trial %s%s", number, len(specs), spec.key, _best_line(study))
            study.enqueue_trial({}, user_attrs={"key": spec.key})
            study.optimize(lambda trial, spec=spec: _objective(trial, spec, base, root, trackers.state), n_trials=1,
                           catch=(LmtuneError,))
    except BaseException as err:
        trackers.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    board = build_leaderboard(study, strategies, TASKS.get(config.task).metric(_primary_metric(config)))
    write_leaderboard(board, root)
    trackers.finish("FINISHED", extra_tags={"lmtune.winner": str(board.winner), "lmtune.rule": board.rule[:500]})
    return board


def _open_study(base: RunConfig, storage: str | None, root: Path, prune: bool) -> Any:
    """The comparison's Optuna study (created or resumed), with the trials of dead workers failed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY, storage=_storage(storage, root), load_if_exists=True,
        direction="maximize" if _greater_is_better(base) else "minimize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(reduction_factor=2) if prune else optuna.pruners.NopPruner(),
    )
    if storage is None:
        _fail_interrupted(study)  # the local study has one worker: a RUNNING trial was killed with us
    else:
        optuna.storages.fail_stale_trials(study)  # shared: only trials whose worker stopped beating
    return study


def _storage(url: str | None, root: Path) -> Any:
    """The study's storage: a SQLite file in the comparison directory, or a shared database whose trials
    send heartbeats, so that a trial of a worker that died is failed and run again by another."""
    import optuna

    if url is None:
        return f"sqlite:///{root / 'study.db'}"
    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S)


def _objective(trial: Any, spec: TrialSpec, base: RunConfig, root: Path, parent: dict[str, Any]) -> float:
    import optuna

    from lmtune import runs

    trial.set_user_attr("key", spec.key)
    trial.set_user_attr("strategy", spec.strategy)
    trial.set_user_attr("seed", spec.seed)
    trial.set_user_attr("variant", spec.variant)
    raw = copy.deepcopy(config_to_dict(base))
    raw["strategy"] = {"name": spec.strategy, "cache": base.strategy.cache}
    raw["output"] = str(root / "trials" / spec.key)
    raw["tracking"] = {**raw["tracking"], "run_name": spec.key}
    cfg = load_config(raw, overrides_for(trial, spec))
    trial.set_user_attr("run_dir", cfg.output)
    metric = _primary_metric(cfg)

    def report(step: int, metrics: dict) -> None:
        trial.report(metrics[metric], step)
        log.info("  %s step %d: %s %.4f", spec.key, step, metric, metrics[metric])
        if trial.should_prune():
            trial.set_user_attr("pruned_at_step", step)
            raise optuna.TrialPruned(f"{metric} {metrics[metric]:.4f} at step {step}")

    with _PeakMemory() as memory:
        start = time.perf_counter()
        try:
            result = runs.train(cfg, on_eval=report, show_diagnosis=False, tracking_parent=parent)
        except LmtuneError as err:  # e.g. a strategy that leaves nothing of this model to train
            trial.set_user_attr("error", str(err))
            log.info("  %s: %s", spec.key, err)
            raise
        finally:
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 2))
            trial.set_user_attr("peak_rss_mib", memory.peak_mib)
    for key in ("trainable_parameters", "parameters", "model_bytes", "checkpoint_bytes", "step", "cache"):
        trial.set_user_attr(key, result.get(key))
    trial.set_user_attr("validation", {k: v for k, v in result["validation"].items() if isinstance(v, float)})
    return result["validation"][metric]  # the final model: the best evaluation's weights (restore_best)


def _with_eval_points(cfg: RunConfig) -> RunConfig:
    """The pruner compares trials at evaluation steps: without ``eval_every``, evaluate 4 times per run."""
    if cfg.train.eval_every:
        return cfg
    from lmtune.data.splits import load_tables
    from lmtune.training.loop import plan_steps

    task = TASKS.get(cfg.task)()
    train = load_tables(cfg.data, task)["train"]
    _, total = plan_steps(len(train), cfg.train, 1)
    return replace(cfg, train=replace(cfg.train, eval_every=max(1, total // 4)))


def _primary_metric(cfg: RunConfig) -> str:
    return TASKS.get(cfg.task).primary_metric


def _greater_is_better(cfg: RunConfig) -> bool:
    return TASKS.get(cfg.task).greater_is_better


def _settled(study: Any, key: str) -> bool:
    """Whether a trial with this key already completed or was pruned (or is running on another worker)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return any(t.user_attrs.get("key") == key and t.state in done for t in study.get_trials(deepcopy=False))


def _fail_interrupted(study: Any) -> None:
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        log.info("trial %s was interrupted; it runs again and resumes from its checkpoint",
                 trial.user_attrs.get("key"))


def _best_line(study: Any) -> str:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return ""
    best = max(done, key=lambda t: t.value) if study.direction.name == "MAXIMIZE" else min(done, key=lambda t: t.value)
    return f"  (best so far: {best.user_attrs.get('key')} {best.value:.4f})"


class _PeakMemory:
    """Samples this process's resident memory during a trial (trials share the process, so the
    process-wide maximum would not tell them apart)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self.peak_mib = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakMemory:
        import psutil

        process = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_mib = max(self.peak_mib, process.memory_info().rss / 2**20)
                self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = round(self.peak_mib, 1)
