"""`lmtune diagnose RUN`: read a run's logs and data, name its state, write RUN/diagnosis.json."""

from __future__ import annotations

import json
from pathlib import Path

from lmtune import rundir
from lmtune.diagnosis.data_checks import data_findings
from lmtune.diagnosis.dynamics import Curves, assess
from lmtune.diagnosis.findings import Diagnosis, Finding, Suggestion
from lmtune.diagnosis.forgetting import forgetting_findings
from lmtune.errors import LmtuneError
from lmtune.integrity import read_json_object
from lmtune.rundir import read_log
from lmtune.tasks import deciding_metric

DIAGNOSIS = "diagnosis.json"


def diagnose(run_dir: str | Path, write: bool = True) -> Diagnosis:
    """Diagnose a run (finished or not) from its metrics log, final metrics and data.

    Returns:
        The diagnosis; also written to ``RUN/diagnosis.json`` when ``write``.
    """
    from lmtune.data.splits import load_tables
    from lmtune.inference import restore_task

    path, cfg, task_state = rundir.read_run(run_dir, finished=False)
    task = restore_task(cfg, task_state, path)
    final_file = path / rundir.FINAL_METRICS
    final = read_json_object(final_file, "the run's final metrics") if final_file.exists() else None
    deciding = deciding_metric(task, cfg.early_stopping)
    curves = Curves.from_log(read_log(path))
    state = assess(curves, cfg, deciding, final, task.capabilities)
    signs = [Finding("overfitting", o.title, o.evidence, [Suggestion(why, keys) for why, keys in o.suggestions])
             for o in task.observations(curves.validation, curves.train_sample, cfg)]
    data: list[Finding] = []
    if task.capabilities.class_labels:  # the data checks are about class labels
        try:
            data = data_findings(path, cfg, load_tables(cfg.data, task))
        except (LmtuneError, OSError) as err:
            data = [Finding("unknown", "the data checks could not run", [str(err).splitlines()[0]])]
    forgetting = forgetting_findings(path, cfg)
    overall = state.kind
    if overall == "healthy" and any(f.kind == "data" and f.severe for f in data):
        overall = "data problem"
    elif overall == "healthy" and signs:
        overall = "overfitting"
    elif overall == "healthy" and any(f.kind == "forgetting" for f in forgetting):
        overall = "forgetting"
    result = Diagnosis(overall, [state, *signs, *forgetting, *data], str(path))
    if write:
        rundir.write_text_atomic(path / DIAGNOSIS, json.dumps(result.to_dict(), indent=2))
    return result
