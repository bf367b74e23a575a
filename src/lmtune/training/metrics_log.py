"""metrics.jsonl (one JSON line per log/eval event) and the terminal progress bar."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.rundir import LOG_FILES, METRICS_LOG

log = logging.getLogger("lmtune")

PLAIN_PROGRESS_EVERY_S = 30.0


class MetricsLog:
    """Appends metric lines to ``RUN/metrics.jsonl`` and drives a progress bar; silent off the main process."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool,
                 on_record: Callable[[dict[str, Any]], None] | None = None):
        self.enabled = enabled
        self.on_record = on_record
        """Also gets every metrics.jsonl line (the experiment trackers)."""
        self.path = run_dir / METRICS_LOG
        self.bar = None
        self._last_line = self._start_time = time.monotonic()
        self._start_n = self._done = start_step
        self._total = total_steps
        self._loss: float | None = None
        """The latest logged training loss; None until the first log line of this process (not a NaN)."""
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                dynamic_ncols=True, disable=None,  # disable=None: no bar when stderr is not a terminal
            )

    def log(self, record: dict[str, Any], file: str = METRICS_LOG) -> None:
        """Append one JSON line to ``RUN/metrics.jsonl`` (or another of LOG_FILES)."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with (self.path.parent / file).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_finite(record)) + "\n")
        if file == METRICS_LOG and self.on_record is not None:
            self.on_record(record)

    def show_loss(self, loss: float) -> None:
        """The latest logged training loss, shown with the progress."""
        self._loss = loss

    def advance(self, samples_per_s: float) -> None:
        if self.bar is None:
            return
        self._done += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=_shown(self._loss), samples_s=f"{samples_per_s:.0f}", refresh=False)
        # without a terminal: the first step at once (a long first step is how a big model looks stuck), then
        # a line every half minute
        if self.bar.disable and (self._done == self._start_n + 1
                                 or time.monotonic() - self._last_line >= PLAIN_PROGRESS_EVERY_S):
            self._plain_progress(self._loss, samples_per_s)

    def _plain_progress(self, loss: float | None, samples_per_s: float) -> None:
        """Without a terminal (CI, nohup, logs) the bar is off: a progress line every half minute instead."""
        self._last_line = time.monotonic()
        done, total = self._done, self._total
        rate = (done - self._start_n) / max(self._last_line - self._start_time, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        log.info("step %d/%d  loss %s  %.0f samples/s  eta %s", done, total, _shown(loss), samples_per_s, eta_text)

    def message(self, text: str) -> None:
        """A line for the user on stderr (stdout stays clean for machine-readable output)."""
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _shown(loss: float | None) -> str:
    """The loss as the progress shows it: "-" before the first log line (a real NaN shows as nan)."""
    return "-" if loss is None else f"{loss:.4f}"


def truncate_log(run_dir: Path, step: int) -> None:
    """Drop lines logged after ``step``: a resumed run re-does those steps and logs them again."""
    for name in LOG_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn last line (the run was killed mid-write) is dropped


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
