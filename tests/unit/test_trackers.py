"""The tracking session on its own: resumed runs log nothing twice, a failing tracker is switched off with a
warning and the others go on, and the config is flattened within each tracker's limits."""

from __future__ import annotations

import logging
from pathlib import Path

from lmtune.loader import load_config
from lmtune.trackers.base import Backend
from lmtune.trackers.session import TrackingSession


class _Memory(Backend):
    name = "memory"
    package = "none"
    max_param_length = 8

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.points, self.params, self.status = fail_at, [], {}, None

    def start(self, run_dir, run_name, project, saved, parent):
        return {"id": "same"}

    def log_params(self, params, config_yaml):
        self.params = params

    def log_metrics(self, step, metrics):
        if step == self.fail_at:
            raise ConnectionError("store went away")
        self.points.append((step, metrics))

    def set_tags(self, tags):
        pass

    def log_artifacts(self, paths):
        pass

    def finish(self, status):
        self.status = status


def _session(tmp_path: Path, *trackers: Backend) -> TrackingSession:
    (tmp_path / "config.yaml").write_text("task: classification\n")
    session = TrackingSession(load_config({"output": str(tmp_path), "data": {"train": "x.csv"}}), tmp_path)
    session.backends = list(trackers)
    return session.start()


def test_a_resumed_session_logs_only_the_steps_its_trackers_lack(tmp_path):
    first = _Memory()
    session = _session(tmp_path, first)
    for step in (2, 4):
        session.record({"step": step, "split": "train", "loss": 1.0 / step, "lr": 0.1})
    session.record({"step": 4, "split": "validation", "accuracy": 0.5})
    assert [p[0] for p in first.points] == [2, 4, 4]
    assert first.params["output"] == str(tmp_path)[:8] != str(tmp_path)  # cut to the tracker's limit
    again = _Memory()
    resumed = _session(tmp_path, again)  # the same run directory: the saved progress is read back
    for step in (4, 6):  # the checkpoint was at step 2... then 4 is re-done
        resumed.record({"step": step, "split": "train", "loss": 0.1})
    resumed.record({"step": 4, "split": "validation", "accuracy": 0.5})
    assert [(p[0], sorted(p[1])) for p in again.points] == [(6, ["train/loss"])]
    assert again.params == {}  # the reopened record has its params already


def test_a_tracker_that_fails_mid_run_is_switched_off_and_the_others_go_on(tmp_path, caplog):
    broken, healthy = _Memory(fail_at=4), _Memory()
    broken.name = "broken"
    session = _session(tmp_path, broken, healthy)
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        for step in (2, 4, 6):
            session.record({"step": step, "split": "train", "loss": 0.5})
        session.finish("FINISHED")
    assert [p[0] for p in healthy.points] == [2, 4, 6] and healthy.status == "FINISHED"
    assert [p[0] for p in broken.points] == [2] and broken.status is None
    assert "tracking: broken failed (store went away); it is switched off for the rest of this run" in caplog.text
