"""The multi-worker rules of `lmtune compare` that need no second machine: SQLite on a network share is
refused, the filesystem type comes from the longest matching mount, and a dead local worker is not live."""

from __future__ import annotations

import time

import pytest

from lmtune.comparison import workers
from lmtune.errors import LmtuneError


class _Study:
    def __init__(self, attrs):
        self.user_attrs = attrs


def test_sqlite_on_a_network_filesystem_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(LmtuneError, match=r"is on a network filesystem \(nfs4\); SQLite corrupts there. Use journal:"):
        workers.check_sqlite(f"sqlite:///{tmp_path / 'study.db'}", _Study({}), 180)


def test_the_filesystem_type_is_that_of_the_longest_mount_point(tmp_path, monkeypatch):
    mounts = "overlay / overlay rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n"
    monkeypatch.setattr(workers.Path, "read_text", lambda self, *a, **k: mounts)
    assert workers.filesystem_type(workers.Path("/mnt/shared/cmp/study.db")) == "nfs4"
    assert workers.filesystem_type(workers.Path("/mnt/sharedother")) == "overlay"


def test_only_workers_that_beat_recently_and_still_exist_are_live():
    import socket

    host = socket.gethostname()
    now = time.time()
    study = _Study({"worker:far:1": now, "worker:old:2": now - 1000, f"worker:{host}:999999999": now,
                    f"worker:{workers.worker_id()}": now})
    assert workers.live_workers(study, 180) == ["far:1"]  # not stale, not a dead local pid, not this worker


def test_a_worker_handed_a_trial_without_a_key_steps_back_instead_of_crashing():
    """Two workers enqueue a trial each and ask; when the other took this worker's trial before its own was
    visible here, Optuna makes a new trial with no key: it ends FAIL and the worker goes on (it was a KeyError)."""
    import optuna
    from optuna.trial import TrialState

    from lmtune.comparison.compare import _ask_and_tell, _objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")  # nothing enqueued: ask() makes a keyless trial

    def objective(trial):
        return _objective(trial, {}, None, None, {}, None)

    _ask_and_tell(study, objective)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and "key" not in trial.user_attrs
    assert workers.taken(study, "full-v0-s42", 3.0) is False  # nothing is marked taken by it
