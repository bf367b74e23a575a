"""``lmtune compare``: run every strategy on the user's config and data, as ordinary run directories under
one comparison directory, scheduled and pruned by an Optuna study stored next to them (so an interrupted
comparison resumes, and several machines can share one study through ``--storage``)."""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from lmtune.comparison import workers
from lmtune.comparison.leaderboard import Leaderboard, build_leaderboard, write_leaderboard
from lmtune.comparison.space import Candidate, TrialSpec, candidates, overrides_for, plan
from lmtune.config import RunConfig, config_to_dict
from lmtune.errors import ConfigError, LmtuneError
from lmtune.extras import check_storage
from lmtune.loader import load_config
from lmtune.tasks import TASKS, DecidingMetric, deciding_metric
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
    heartbeat: float = HEARTBEAT_S,
    run: bool = True,
    vary: dict[str, list[str]] | None = None,
) -> Leaderboard:
    """Train each strategy (× seeds × tuned variants), rank them, and name a winner.

    Args:
        config: the user's run config (its data, model, task and training budget are shared).
        strategies: strategy names to compare.
        seeds: runs per configuration, for mean ± std.
        trials: settings per strategy: 1 runs the defaults; more adds tuned variants (lr, LoRA r, freeze k).
        budget: optimizer steps per trial (overrides the config's epochs).
        storage: an Optuna storage: default a SQLite file in the comparison directory (one worker);
            ``journal:PATH`` (several worker processes on one machine) or ``postgresql://...`` / ``mysql://...``
            (several machines): every worker runs the same comparison and takes trials no one else has.
        out_dir: comparison directory; default ``<config output>-compare``.
        prune: stop hopeless trials early with successive halving.
        heartbeat: seconds between a worker's signs of life; after three missed ones its trial runs again.
        run: False: only build the leaderboard from the storage (``--leaderboard``).
        vary: settings to compare besides the strategy (config key → values, e.g. ``{"preference.loss": ["dpo",
            "ipo"]}``): every strategy runs with every combination, each a candidate of its own.

    Returns:
        The leaderboard, also written as leaderboard.csv / leaderboard.json, with the winner.
    """
    entrants = candidates(strategies, vary)
    root, base = _prepare(config, entrants, budget, storage, out_dir)
    study = _open_study(base, storage, root, prune)
    specs = plan(entrants, [base.train.seed + i for i in range(seeds)], trials)
    # a run is the parent record in the experiment trackers, each trial a child of it
    trackers = TrackingSession(base, root, header=None).start() if run else None
    try:
        if run:
            _work(study, specs, base, root, storage, heartbeat, trackers.state)
    except BaseException as err:
        trackers.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    board = _leaderboard(study, config, entrants, root)
    if trackers is not None:
        trackers.finish("FINISHED", extra_tags={"lmtune.winner": str(board.winner), "lmtune.rule": board.rule[:500]})
    return board


def _leaderboard(study: Any, config: RunConfig, entrants: list[Candidate], root: Path) -> Leaderboard:
    """The ranked candidates (by the deciding metric, ties by the task's secondary one), written to ``root``."""
    task = TASKS.get(config.task)
    secondary = task.metric(task.secondary_metric) if task.secondary_metric else None
    board = build_leaderboard(study, [c.name for c in entrants], _deciding(config).metric, secondary)
    write_leaderboard(board, root)
    return board


def _prepare(config: RunConfig, entrants: list[Candidate], budget: int | None, storage: str | None,
             out_dir: str | Path | None) -> tuple[Path, RunConfig]:
    """(comparison directory, the config every trial starts from); a bad strategy name or varied setting, or a
    missing database driver, fails here in one line, before any work."""
    import optuna

    if storage is not None:
        check_storage(storage)
    # heartbeats and stale-trial handling are marked experimental by Optuna; their warnings are noise here
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for entrant in entrants:
        try:
            load_config({**config_to_dict(config), "strategy": {"name": entrant.strategy}}, list(entrant.settings))
        except ConfigError as err:
            # a strategy this model cannot take (LoRA of a new decoder) is refused by its trials, on the board,
            # like one that leaves nothing to train; any other problem stops the comparison here
            if not all(problem.startswith("strategy.name:") for problem in err.problems):
                raise
    root = Path(out_dir) if out_dir else Path(f"{config.output}-compare")
    root.mkdir(parents=True, exist_ok=True)
    base = replace(config, train=replace(config.train, max_steps=budget or config.train.max_steps))
    return root, _with_eval_points(base)


def _work(study: Any, specs: list[TrialSpec], base: RunConfig, root: Path, storage: str | None,
          heartbeat: float, parent: dict[str, Any]) -> None:
    """This worker's share: trials no one has taken, until every one is done (see `workers`)."""
    grace = 3 * heartbeat
    if storage is None or storage.startswith("sqlite"):
        workers.check_sqlite(storage or f"sqlite:///{root / 'study.db'}", study, grace)
    by_key = {spec.key: spec for spec in specs}
    with workers.Heartbeat(study, heartbeat) as beat:
        while True:
            if storage is not None:
                workers.fail_stale(study, grace)
            spec = next((s for s in specs if not workers.taken(study, s.key, grace)), None)
            if spec is None:
                if not _running(study):
                    return
                time.sleep(min(heartbeat, 5.0))  # others are finishing the last trials
                continue
            log.info("[%s] trial %s (%d of %d)%s", workers.worker_id(), spec.key, specs.index(spec) + 1,
                     len(specs), _best_line(study))
            study.enqueue_trial({}, user_attrs={"key": spec.key})
            _ask_and_tell(study, lambda trial: _objective(trial, by_key, base, root, parent, beat))


def _ask_and_tell(study: Any, objective: Callable[[Any], float]) -> None:
    """Run one trial through Optuna's ask-and-tell interface. A trial the objective refuses (an LmtuneError,
    already told to the user in one line) fails quietly: `Study.optimize` would log its traceback."""
    import optuna
    from optuna.trial import TrialState

    trial = study.ask()  # the next enqueued trial: its key says which run it is
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except LmtuneError:
        study.tell(trial, state=TrialState.FAIL)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


def _running(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _open_study(base: RunConfig, storage: str | None, root: Path, prune: bool) -> Any:
    """The comparison's Optuna study (created or resumed), with the trials of dead workers failed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY, storage=_storage(storage, root), load_if_exists=True,
        direction="maximize" if _deciding(base).maximize else "minimize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(reduction_factor=2) if prune else optuna.pruners.NopPruner(),
    )
    if storage is None:
        _fail_interrupted(study)  # the local study has one worker: a RUNNING trial was killed with us
    return study


def _storage(url: str | None, root: Path) -> Any:
    """The study's storage: a SQLite file in the comparison directory, or a shared database whose trials
    send heartbeats, so that a trial of a worker that died is failed and run again by another."""
    import optuna

    if url is None:
        return f"sqlite:///{root / 'study.db'}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return _database(url)


def _database(url: str, attempts: int = 6) -> Any:
    """An RDB storage. Workers started together on a new database race to create Optuna's tables (one of
    them gets "already exists"); the loser tries again, and then finds the tables made."""
    import random

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())  # noqa: S311 - jitter, not security


class _Duplicate(LmtuneError):
    """Another worker took the same trial key first; this trial steps back (it ends FAIL)."""


def _objective(trial: Any, by_key: dict[str, TrialSpec], base: RunConfig, root: Path, parent: dict[str, Any],
               beat: workers.Heartbeat) -> float:
    """Run the trial the storage handed out (its key was set when it was enqueued, by this worker or another)."""
    key = trial.user_attrs.get("key")
    if key is None:
        # another worker took the trial this one enqueued, before the one it enqueued was visible here, so Optuna
        # made a new trial with no key (seen in CI: a KeyError ended a worker of two on one journal file)
        raise _Duplicate("the trial this worker enqueued was taken by another; picking again")
    spec = by_key[key]
    first = workers.duplicate_of(trial.study, trial)
    if first is not None:
        trial.set_user_attr("duplicate_of", first)
        raise _Duplicate(f"trial {spec.key} is already taken (trial {first})")
    beat.trial = trial
    try:
        return _run_trial(trial, spec, base, root, parent)
    finally:
        beat.trial = None


def _run_trial(trial: Any, spec: TrialSpec, base: RunConfig, root: Path, parent: dict[str, Any]) -> float:
    import optuna

    from lmtune.review import train_and_review

    trial.set_user_attr("key", spec.key)
    trial.set_user_attr("worker", workers.worker_id())
    trial.set_user_attr("strategy", spec.strategy)
    trial.set_user_attr("candidate", spec.candidate)
    trial.set_user_attr("seed", spec.seed)
    trial.set_user_attr("variant", spec.variant)
    raw = copy.deepcopy(config_to_dict(base))
    raw["strategy"] = {"name": spec.strategy, "cache": base.strategy.cache}
    raw["output"] = str(root / "trials" / spec.key)
    raw["tracking"] = {**raw["tracking"], "run_name": spec.key}
    try:
        cfg = load_config(raw, overrides_for(trial, spec))
    except LmtuneError as err:  # a strategy this model cannot take (checked up front, so nothing else)
        _refuse(trial, spec, err)
    trial.set_user_attr("run_dir", cfg.output)
    metric = _deciding(cfg).name

    started = time.monotonic()

    def report(step: int, metrics: dict) -> None:
        trial.report(metrics[metric], step)
        total = cfg.train.max_steps
        eta = f", eta {(time.monotonic() - started) / step * (total - step):.0f} s" if total and step else ""
        log.info("  [%s] %s step %d%s: %s %.4f%s", workers.worker_id(), spec.key, step, f"/{total}" if total else "",
                 metric, metrics[metric], eta)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_step", step)
            raise optuna.TrialPruned(f"{metric} {metrics[metric]:.4f} at step {step}")

    with _PeakMemory() as memory:
        start = time.perf_counter()
        try:
            result = train_and_review(cfg, on_eval=report, show_diagnosis=False, tracking_parent=parent)
        except LmtuneError as err:  # e.g. a strategy that leaves nothing of this model to train
            _refuse(trial, spec, err)
        finally:
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 2))
            trial.set_user_attr("peak_rss_mib", memory.peak_mib)
    for key in ("trainable_parameters", "parameters", "model_bytes", "checkpoint_bytes", "step", "cache"):
        trial.set_user_attr(key, result.get(key))
    trial.set_user_attr("validation", {k: v for k, v in result["validation"].items() if isinstance(v, float)})
    return result["validation"][metric]  # the final model: the best evaluation's weights (restore_best)


def _refuse(trial: Any, spec: TrialSpec, err: LmtuneError) -> NoReturn:
    """A trial this model or task cannot run: the reason goes on the board, and the trial is not retried."""
    trial.set_user_attr("error", str(err))
    log.info("  %s: %s", spec.key, err)
    raise err


def _with_eval_points(cfg: RunConfig) -> RunConfig:
    """The pruner compares trials at evaluation steps: without ``eval_every``, evaluate 4 times per run."""
    if cfg.train.eval_every:
        return cfg
    from lmtune.data.splits import load_tables
    from lmtune.training.loop import plan_steps

    task = TASKS.get(cfg.task)()
    train = load_tables(cfg.data, task)["train"]
    # before tokenizing, every example counts as max_length tokens: with train.batch_tokens that overestimates the
    # batches' size in tokens, so there are at most 4 evaluation points (and one at each epoch's end)
    _, total = plan_steps([cfg.train.max_length] * len(train), cfg.train, 1)
    return replace(cfg, train=replace(cfg.train, eval_every=max(1, total // 4)))


def _deciding(cfg: RunConfig) -> DecidingMetric:
    """What ranks and prunes the trials: the metric that also picks the weights each trial keeps."""
    return deciding_metric(TASKS.get(cfg.task), cfg.early_stopping)


def _fail_interrupted(study: Any) -> None:
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
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
