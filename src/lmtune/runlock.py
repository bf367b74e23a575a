"""One writer per run directory: an exclusive ``flock`` on ``RUN/.lock``, held for the life of the process
that trains into (or resumes) the run, with the holder's pid, host and command written in the file.

The kernel releases a ``flock`` when its holder dies, however it dies, so a lock left by a killed process
is stale by construction: the next writer takes it over at once and says whose it was. The lock file
itself is never deleted while a run exists (unlinking a locked file lets two processes lock two inodes).
Readers (eval, predict, report, explain) never take it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run directory's writer lock (creating the directory).

    Raises:
        LmtuneError: another live process holds it (the message names its pid, host and start time).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release(failed=kind is not None)

    def acquire(self) -> None:
        self._created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LmtuneError(f"output: cannot create {self.path} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_busy_holder(fd))
            os.close(fd)
            raise LmtuneError(f"output: {self.run_dir} is being written by {holder}; wait for it to finish, "
                              "or choose another output") from None
        previous = _read_holder(fd)
        if previous:
            log.info("took over the lock of %s on %s: that process is gone", _describe(previous), self.run_dir)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self, failed: bool = False) -> None:
        """Clear the holder and unlock. A failed start that created the directory and wrote nothing else
        removes it, so bad input leaves nothing behind."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file: not held, and no stale holder to report
        if failed and self._created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            self.run_dir.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def live_holder(run_dir: Path) -> dict | None:
    """The process writing ``run_dir`` now ({} when it cannot be told), or None when nobody holds its lock."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _busy_holder(fd) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _busy_holder(fd: int, wait: float = 2.0) -> dict | None:
    """The holder of a lock found held. It writes itself into the file right after it locks, so a file
    read in between (empty, or cut mid-write) is read again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while not (holder := _read_holder(fd)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return holder


def _read_holder(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {since})"
