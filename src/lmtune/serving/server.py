"""`lmtune serve`: the app on uvicorn, with a graceful stop.

On SIGTERM (or Ctrl-C) the server drains: /ready turns 503 and new work is refused with 503, while requests
already in flight (streams included) finish, for at most ``drain_timeout`` seconds; then it closes and
exits 0. A second signal stops it at once.
"""

from __future__ import annotations

import logging
import sys
import time
from types import FrameType

import uvicorn

from lmtune.errors import LmtuneError
from lmtune.serving.app import State, create_app
from lmtune.serving.limits import Limits
from lmtune.serving.served import names_and_paths

log = logging.getLogger("lmtune")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: State):
        super().__init__(config)
        self.state = state
        self.drain_since: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a captured signal after shutting down (the process then dies by it); a drained
        # server exits 0 instead, so the signal is not recorded
        if self.drain_since is not None:  # the second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.drain_since = time.monotonic()
        self.state.draining = True
        self.state.metrics.ready.set(0)
        log.info("serve: draining (%d requests in flight)", self.state.in_flight)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.state.failed:
            return True
        if self.drain_since is None:
            return False
        return self.state.in_flight == 0 or time.monotonic() - self.drain_since > self.state.limits.drain_timeout


def run_server(runs: list[str], host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
               log_level: str = "info", backend: str = "torch") -> int:
    """Serve ``runs`` until stopped; 0 after a graceful stop, 2 when a run could not be loaded."""
    from lmtune.rundir import read_run

    for _, path in names_and_paths(runs):  # a wrong path or damaged run fails here, in one line, before binding
        read_run(path)
    limits = limits or Limits()
    # the model thread holds the GIL between torch ops; a shorter switch interval lets the event loop in sooner
    # (429s and health checks answered in milliseconds while a batch computes)
    sys.setswitchinterval(0.0005)
    app = create_app(runs, limits, backend)
    state: State = app.state.lmtune
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=int(limits.drain_timeout) + 1, access_log=False)
    server = _DrainingServer(config, state)
    server.run()
    if state.failed:
        raise LmtuneError(f"serve: {state.failed}")
    if not server.started:
        raise LmtuneError(f"serve: could not listen on {host}:{port} (see the message above)")
    return 0
