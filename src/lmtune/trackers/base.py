"""What lmtune asks of an experiment tracker (MLflow, TensorBoard, W&B, trackio): one small interface, so the
training loop, `lmtune compare` and `lmtune track` never know which trackers are on."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Literal

Status = Literal["FINISHED", "FAILED", "KILLED"]


class Backend(abc.ABC):
    name: str
    package: str
    """The package it needs (`lmtune.extras.require` names it in the error)."""

    @abc.abstractmethod
    def start(self, run_dir: Path, run_name: str, project: str, saved: dict[str, Any] | None,
              parent: dict[str, Any] | None) -> dict[str, Any]:
        """Open (or, with ``saved``, reopen) this run's record; returns what to save to reopen it later.

        ``parent``: the comparison this run is a trial of (what the parent's ``start`` returned), or None.
        Raises on a store that cannot be reached (the run then does not start).
        """

    @abc.abstractmethod
    def log_params(self, params: dict[str, str], config_yaml: str) -> None:
        """The flattened config (values already cut to `max_param_length`) and the whole config as text."""

    @abc.abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics logged at ``step``."""

    @abc.abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags of the run (final metrics, diagnosis)."""

    @abc.abstractmethod
    def log_artifacts(self, paths: list[Path]) -> None:
        """Files and folders of the finished run."""

    @abc.abstractmethod
    def finish(self, status: Status) -> None:
        """Close the run with ``status``."""

    max_param_length: int = 500
    """Longest parameter value the backend keeps."""
