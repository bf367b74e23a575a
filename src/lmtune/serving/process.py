"""`lmtune serve` in a child process on a free loopback port: for notebooks, tests and benchmarks.

    with ServeProcess(["sst2=runs/sst2"]) as server:
        server.wait_ready()
        ...  # HTTP requests to server.url

The child is a real `python -m lmtune serve`, so what it answers is what a deployed server answers. Its
output goes to a temporary log file, whose tail `output` returns, e.g. for an error message; `stop` keeps the
tail and deletes the file.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """A started `lmtune serve RUNS... OPTIONS...`; `wait_ready` waits for /ready, `stop` drains it.

    Args:
        runs: the `serve` arguments naming runs (``name=path`` or a path).
        options: further `serve` options, e.g. ``"--max-queue", "4"``.
        cwd: the child's working directory.
        env: the child's environment (default: this process's).
    """

    def __init__(self, runs: list[str], *options: str, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.gettempdir()) / f"lmtune-serve-{self.port}.log"
        self._tail = ""
        command = [sys.executable, "-m", "lmtune", "serve", *runs, "--port", str(self.port), *options]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 180) -> None:
        """Return once /ready answers 200; RuntimeError with the log's tail if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lmtune serve exited with {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while loading
            time.sleep(0.2)
        raise RuntimeError(f"lmtune serve not ready in {timeout:g} s: {self.output()}")

    def output(self) -> str:
        """The last 3,000 characters the child wrote."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else self._tail

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the server drains, then exits 0), killed after ``timeout`` seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log.is_file():
            self._tail = self.output()
            self.log.unlink()
        return self.proc.returncode

