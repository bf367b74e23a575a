"""`lmtune track RUN --to mlflow`: log a run directory that was trained without (or before) a tracker.

The replay goes through the same session as live logging: a run already logged to a tracker continues its
record there and only what it lacks is sent, so replaying twice logs nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune import rundir
from lmtune.integrity import read_json_object
from lmtune.rundir import read_log
from lmtune.trackers.session import TrackingSession


def replay(run_dir: str | Path, trackers: list[str], mlflow_uri: str | None = None) -> dict[str, Any]:
    """Send the run's config, metric lines, final metrics and diagnosis to ``trackers``; returns what was sent."""
    from lmtune.config import config_to_dict
    from lmtune.loader import load_config

    path, cfg, _ = rundir.read_run(run_dir)
    raw = config_to_dict(cfg)
    raw["tracking"] = {**raw["tracking"], "report_to": list(trackers),
                       "mlflow_uri": mlflow_uri or cfg.tracking.mlflow_uri}
    cfg = load_config(raw)  # validates the tracker names
    session = TrackingSession(cfg, path).start()
    records = read_log(path)
    for record in records:
        session.record(record)
    finished = (path / rundir.FINAL_METRICS).is_file()
    final = read_json_object(path / rundir.FINAL_METRICS, "the run's final metrics") if finished else None
    session.finish("FINISHED" if finished else "KILLED", final)
    return {"run": str(path), "trackers": session.state, "lines": len(records),
            "status": "finished" if finished else "unfinished"}

