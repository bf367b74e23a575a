"""A run's experiment trackers: opened before training, fed every line of ``metrics.jsonl``, closed with the
run's status. What each tracker needs to reopen its record is kept in ``RUN/tracking.json``, so a killed and
resumed run continues the same tracker run, and steps it had already logged are not logged twice.

Failures are contained: a tracker that cannot start is an error before training (nothing trains unseen);
one that fails mid-run is a warning, it is switched off, and training goes on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from lmtune.config import RunConfig, config_to_dict
from lmtune.errors import LmtuneError
from lmtune.trackers.base import Backend, Status

log = logging.getLogger("lmtune")

STATE_FILE = "tracking.json"
SKIPPED_KEYS = {"time", "step", "epoch", "split"}
"""Fields of a metrics.jsonl line that are not metrics."""


def backend(name: str, cfg: RunConfig) -> Backend:
    from lmtune.extras import require

    if name == "mlflow":
        require("mlflow", "tracking.report_to: mlflow")
        from lmtune.trackers.mlflow_backend import MLflowBackend

        return MLflowBackend(cfg.tracking.mlflow_uri)
    if name == "tensorboard":
        require("tensorboard", "tracking.report_to: tensorboard")
        from lmtune.trackers.tensorboard_backend import TensorBoardBackend

        return TensorBoardBackend()
    if name == "wandb":
        require("wandb", "tracking.report_to: wandb")
        from lmtune.trackers.wandb_backend import WandbBackend

        return WandbBackend()
    require("trackio", "tracking.report_to: trackio")
    from lmtune.trackers.trackio_backend import TrackioBackend

    return TrackioBackend()


class TrackingSession:
    """The trackers of one run (or of one comparison: the parent of its trials)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, parent: dict[str, dict[str, Any]] | None = None,
                 header: str | None = "config.yaml"):
        """``header``: the file whose presence means the directory is the run's (the state is saved once it
        exists, so a run refused before it starts leaves no file behind); None: save at once."""
        self.cfg, self.run_dir, self.parent, self.header = cfg, Path(run_dir), parent or {}, header
        self.backends = [backend(name, cfg) for name in cfg.tracking.report_to]
        self.others: dict[str, Any] = {}
        """Records of trackers this session does not use (a run tracked before with another), kept as they are."""
        self.state: dict[str, dict[str, Any]] = {}
        """Per tracker: what reopens its record, and its progress: the last step it has and which kinds of line
        (train, validation, ...) it has at that step. A resumed run re-does the steps after its checkpoint, with
        the same values, and those are not logged again."""

    @property
    def active(self) -> bool:
        return bool(self.backends)

    def start(self) -> TrackingSession:
        """Open every tracker (reopening the run's own records when it has some); an error names the tracker."""
        if not self.backends:
            return self  # tracking is off: nothing to open, nothing written
        saved = self._read_state()
        self.others = {k: v for k, v in saved.items() if k not in {t.name for t in self.backends}}
        name = self.cfg.tracking.run_name or self.run_dir.resolve().name
        params = _flat(config_to_dict(self.cfg))
        config_yaml = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
        opened = []
        for tracker in self.backends:
            before = saved.get(tracker.name) if isinstance(saved.get(tracker.name), dict) else None
            try:
                record = tracker.start(self.run_dir, name, self.cfg.tracking.project, before,
                                       self.parent.get(tracker.name))
            except Exception as err:  # noqa: BLE001 - any failure to reach a store is the user's to fix
                for other in opened:
                    _quietly(other.finish, "FAILED")
                raise LmtuneError(f"tracking.report_to: {tracker.name} could not start ({_short(err)})") from None
            opened.append(tracker)
            reopened = before is not None and all(before.get(k) == v for k, v in record.items())
            self.state[tracker.name] = {**record, "last_step": before.get("last_step", -1) if reopened else -1,
                                        "seen": before.get("seen", []) if reopened else []}
            if not reopened:
                self._guarded(tracker, lambda t: t.log_params(
                    {k: v[: t.max_param_length] for k, v in params.items()}, config_yaml))
        self._save_state()
        return self

    def record(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl: its numbers, named ``split/metric``, at its step, to each tracker that
        does not have it yet."""
        step, split = int(record.get("step", 0)), str(record.get("split", "train"))
        metrics = {f"{split}/{key}": float(value) for key, value in record.items()
                   if key not in SKIPPED_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)}
        changed = False
        for tracker in list(self.backends):
            progress = self.state[tracker.name]
            if step < progress["last_step"] or step == progress["last_step"] and split in progress["seen"]:
                continue
            if metrics:
                self._guarded(tracker, lambda t: t.log_metrics(step, metrics))
            if step > progress["last_step"]:
                progress["last_step"], progress["seen"] = step, []
            progress["seen"].append(split)
            changed = True
        if changed:
            self._save_state()

    def finish(self, status: Status, final: dict[str, Any] | None = None,
               extra_tags: dict[str, str] | None = None) -> None:
        """Tags (final metrics, diagnosis, ``extra_tags``), artifacts when asked, then the status."""
        if not self.backends:
            return
        tags = {"lmtune.status": status.lower(), **(extra_tags or {})}
        for split in ("validation", "test"):
            for key, value in ((final or {}).get(split) or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tags[f"final.{split}.{key}"] = f"{value:.6g}"
        diagnosis = self.run_dir / "diagnosis.json"
        if diagnosis.is_file():
            try:
                tags["lmtune.diagnosis"] = str(json.loads(diagnosis.read_text(encoding="utf-8")).get("state"))
            except (ValueError, AttributeError):
                pass
        self._each(lambda t: t.set_tags(tags))
        if status == "FINISHED" and self.cfg.tracking.log_artifacts == "final":
            names = ["report.html", "metrics.json", "diagnosis.json", "config.yaml"]
            paths = [self.run_dir / n for n in names if (self.run_dir / n).is_file()]
            if self.cfg.tracking.log_model and (self.run_dir / "model").is_dir():
                paths.append(self.run_dir / "model")
            self._each(lambda t: t.log_artifacts(paths))
        self._each(lambda t: t.finish(status))
        self._save_state()

    def _each(self, call: Any) -> None:
        for tracker in list(self.backends):
            self._guarded(tracker, call)

    def _guarded(self, tracker: Backend, call: Any) -> None:
        try:
            call(tracker)
        except Exception as err:  # noqa: BLE001 - a tracker's failure must not stop the training
            log.warning("tracking: %s failed (%s); it is switched off for the rest of this run",
                        tracker.name, _short(err))
            self.backends.remove(tracker)

    def _read_state(self) -> dict[str, Any]:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return {}
        from lmtune.integrity import read_json_object

        return read_json_object(path, "the run's tracker records")

    def _save_state(self) -> None:
        if not self.run_dir.is_dir() or self.header and not (self.run_dir / self.header).is_file():
            return  # written once the run directory holds the run (by its first metrics line)
        from lmtune.rundir import write_text_atomic

        write_text_atomic(self.run_dir / STATE_FILE, json.dumps({**self.others, **self.state}, indent=2))


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _short(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


def _quietly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # noqa: BLE001, S110 - closing after another failure; that failure is what is reported
        pass
