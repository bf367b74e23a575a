"""`lmtune diagnose RUN`: read a run's logs and data, name its state, write RUN/diagnosis.json."""

from __future__ import annotations

import json
from pathlib import Path

from lmtune import rundir
from lmtune.diagnosis.data_checks import data_findings
from lmtune.diagnosis.dynamics import Curves, assess
from lmtune.diagnosis.findings import Diagnosis, Finding
from lmtune.errors import LmtuneError
from lmtune.integrity import read_json_object
from lmtune.training.tracking import read_log

DIAGNOSIS = "diagnosis.json"


def diagnose(run_dir: str | Path, write: bool = True) -> Diagnosis:
    """Diagnose a run (finished or not) from its metrics log, final metrics and data.

    Returns:
        The diagnosis; also written to ``RUN/diagnosis.json`` when ``write``.
    """
    from lmtune.data.splits import load_tables
    from lmtune.inference import restore_task
    from lmtune.runs import watched_metric

    path, cfg, task_state = rundir.read_run(run_dir, finished=False)
    task = restore_task(cfg, task_state)
    final_file = path / rundir.FINAL_METRICS
    final = read_json_object(final_file, "the run's final metrics") if final_file.exists() else None
    watch = watched_metric(cfg, task)
    declared = task.metric(watch)
    maximize = cfg.early_stopping.maximize(declared.greater_is_better)
    state = assess(Curves.from_log(read_log(path)), cfg, watch, maximize, final, declared)
    data: list[Finding] = []
    if task.capabilities.class_labels:  # the data checks are about class labels
        try:
            data = data_findings(path, cfg, load_tables(cfg.data, task))
        except (LmtuneError, OSError) as err:
            data = [Finding("unknown", "the data checks could not run", [str(err).splitlines()[0]])]
    overall = state.kind
    if overall == "healthy" and any(f.kind == "data" and f.severe for f in data):
        overall = "data problem"
    result = Diagnosis(overall, [state, *data], str(path))
    if write:
        rundir.write_text_atomic(path / DIAGNOSIS, json.dumps(result.to_dict(), indent=2))
    return result
