"""`lmtune train` as users call it: the training pipeline, then a look at the finished run.

The look is the run's diagnosis (written to RUN/diagnosis.json and told to the user) and, when an experiment
tracker logs artifacts, the HTML report. The pipeline sits below diagnosis and reporting in the layers, so it
takes this as its ``review`` callback instead of importing them.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from lmtune import pipeline
from lmtune.config import RunConfig

log = logging.getLogger("lmtune")


def train_and_review(config: RunConfig | str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                     show_diagnosis: bool = True, **options: Any) -> dict[str, Any]:
    """`lmtune.pipeline.train` with the finished run diagnosed (logged when ``show_diagnosis``).

    ``options`` go to `lmtune.pipeline.train` (``on_eval``, ``tracking_parent``). Returns the final metrics.
    """
    return pipeline.train(config, overrides, review=partial(review_run, show=show_diagnosis), **options)


def review_run(run_dir: Path, report: bool, show: bool = True) -> None:
    """Diagnose the finished run; with ``report``, also write RUN/report.html for the trackers to log.

    Neither may fail the run: its model is saved already, so a problem here is a warning.
    """
    from lmtune.diagnosis import diagnose

    try:
        diagnosis = diagnose(run_dir)
    except Exception as err:  # noqa: BLE001 - the trained model is saved; a diagnosis bug must not fail the run
        log.warning("could not diagnose the run (%s: %s); try `lmtune diagnose %s`", type(err).__name__, err, run_dir)
    else:
        if show:
            log.info("%s", diagnosis.text())
    if report:
        from lmtune.reporting import write_report

        try:
            write_report(run_dir)
        except Exception as err:  # noqa: BLE001 - the run is saved; its report is an extra for the tracker
            log.warning("could not write the report for the tracker (%s: %s)", type(err).__name__, err)
