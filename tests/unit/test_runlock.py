"""The single-writer lock of a run directory, against real other processes."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time

import pytest

from lmtune.errors import LmtuneError
from lmtune.runlock import LOCK_FILE, RunLock

HOLD = """
import sys, time
from lmtune.runlock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_a_second_writer_by_name(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(LmtuneError) as caught:
            RunLock(run).acquire()
        message = str(caught.value)
        assert message.startswith(f"output: {run} is being written by pid {proc.pid} on {socket.gethostname()} "
                                  "(since ")
        assert run.is_dir()  # the refused writer removed nothing of the holder's
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    proc = _holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == proc.pid  # the dead holder is still written
    with caplog.at_level(logging.INFO, logger="lmtune"), RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] != proc.pid
    assert f"took over the lock of pid {proc.pid} on {socket.gethostname()}" in caplog.text
    assert (run / LOCK_FILE).read_text() == ""  # released: no holder to report


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(RuntimeError), RunLock(run):
        raise RuntimeError("bad data")
    assert not run.exists()
    run.mkdir()
    (run / "keep.txt").write_text("x")
    with pytest.raises(RuntimeError), RunLock(run):
        raise RuntimeError("bad data")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "keep.txt"]


def test_the_lock_is_released_for_the_next_writer(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        pass
    start = time.monotonic()
    with RunLock(run):
        pass
    assert time.monotonic() - start < 1


LOCK_THEN_WRITE = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.5)  # the window between taking the lock and writing the holder into it
os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
time.sleep(60)
"""


def test_a_writer_that_has_locked_but_not_yet_written_itself_is_still_named(tmp_path):
    """Two runs started together: the loser may look while the winner holds the lock with an empty file."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", LOCK_THEN_WRITE, str(run / LOCK_FILE)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert (run / LOCK_FILE).read_text() == ""
        with pytest.raises(LmtuneError, match=f"is being written by pid {proc.pid} on "):
            RunLock(run).acquire()
    finally:
        proc.kill()
        proc.wait()
