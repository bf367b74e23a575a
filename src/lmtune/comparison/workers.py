"""Several `lmtune compare` workers on one study: who runs which trial, and what happens when one dies.

Every worker runs the same command against the same ``--storage``. A worker takes the first trial key that
no one has completed, pruned, or is running (a running trial beats its heartbeat into the storage every
``heartbeat`` seconds); a trial whose heartbeat is older than three beats belongs to a dead worker and is
failed, so a live worker runs it again (resuming from its checkpoint when the trial directories are
shared). Two workers can still pick the same key at the same instant: the one whose trial has the higher
number finds the other and steps back (its trial ends FAIL as a duplicate), so no key is completed twice.
The mechanism lives in user attributes, so it works on every Optuna storage (SQLite, journal files,
PostgreSQL, MySQL), not only on those with Optuna's own heartbeats.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")

BEAT = "beat"
"""User attribute of a running trial: when its worker last showed it was alive (unix seconds)."""
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "afs", "lustre", "glusterfs",
                       "ceph", "fuse.glusterfs", "fuse.ceph"}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Beats for this worker and its current trial from a background thread."""

    def __init__(self, study: Any, every_s: float):
        self.study, self.every_s = study, every_s
        self.trial: Any = None
        """The trial this worker runs now (an `optuna.Trial`), or None between trials."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmtune-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._beat()

    def _beat(self) -> None:
        now = round(time.time(), 3)
        try:
            self.study.set_user_attr(f"worker:{worker_id()}", now)
            trial = self.trial
            if trial is not None:
                trial.set_user_attr(BEAT, now)
        except Exception as err:  # noqa: BLE001 - a missed beat is retried; a long outage makes the trial stale
            log.warning("compare: heartbeat failed (%s)", err)


def live_workers(study: Any, grace_s: float) -> list[str]:
    """Other workers that beat within ``grace_s`` (on this host: whose process still exists)."""
    import psutil

    now, me, host = time.time(), worker_id(), socket.gethostname()
    live = []
    for key, beat in study.user_attrs.items():
        name = key.removeprefix("worker:")
        if not key.startswith("worker:") or name == me or not isinstance(beat, (int, float)) or now - beat >= grace_s:
            continue
        where, _, pid = name.rpartition(":")
        if where == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
            continue  # killed a moment ago on this machine
        live.append(name)
    return live


def fail_stale(study: Any, grace_s: float) -> list[str]:
    """Fail the running trials whose worker stopped beating; returns their keys."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    now, failed = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.user_attrs.get(BEAT) or (trial.datetime_start.timestamp() if trial.datetime_start else now)
        if now - beat < grace_s:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except (UpdateFinishedTrialError, RuntimeError, ValueError):
            continue  # it just finished, or another worker failed it first
        failed.append(trial.user_attrs.get("key"))
        log.info("compare: trial %s stopped beating (its worker is gone); it runs again",
                 trial.user_attrs.get("key"))
    return failed


def taken(study: Any, key: str, grace_s: float) -> bool:
    """Whether ``key`` is completed, pruned, refused, or running on a live worker."""
    from optuna.trial import TrialState

    now = time.time()
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("key") != key:
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        if trial.state == TrialState.FAIL and "error" in trial.user_attrs:  # refused (e.g. nothing to train)
            return True
        if trial.state == TrialState.RUNNING and now - trial.user_attrs.get(BEAT, now) < grace_s:
            return True
    return False


def duplicate_of(study: Any, trial: Any) -> int | None:
    """An earlier trial of the same key that is done or running (this one then steps back), or None."""
    from optuna.trial import TrialState

    key = trial.user_attrs.get("key")
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or other.user_attrs.get("key") != key:
            continue
        if other.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return other.number
        if other.state == TrialState.RUNNING and other.number < trial.number:
            return other.number
    return None


def check_sqlite(url: str, study: Any, grace_s: float) -> None:
    """SQLite is for one worker on a local disk: refuse a second live worker, or a file on a network share."""
    path = Path(url.removeprefix("sqlite:///"))
    kind = filesystem_type(path.parent if not path.exists() else path)
    if kind in NETWORK_FILESYSTEMS:
        raise LmtuneError(f"--storage: {path} is on a network filesystem ({kind}); SQLite corrupts there. Use "
                          "journal:PATH for several processes on one machine, postgresql://... for several machines")
    others = live_workers(study, grace_s)
    if others:
        raise LmtuneError(f"--storage: this comparison's SQLite study is in use by {', '.join(others)}; SQLite takes "
                          "one worker. Use --storage journal:PATH (one machine) or postgresql://... (several)")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux: /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best, kind = str(Path(path).resolve()), -1, None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > best:
                best, kind = len(parts[1]), parts[2]
    return kind
