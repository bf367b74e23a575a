"""MLflow through its client API (not the fluent one: a comparison logs its trials from one process, and the
fluent API keeps one global active run)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lmtune.trackers.base import Backend, Status


class MLflowBackend(Backend):
    name = "mlflow"
    package = "mlflow"
    max_param_length = 6000  # MLflow's limit since 2.x (MAX_PARAM_VAL_LENGTH)

    def __init__(self, uri: str | None):
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run_dir: Path, run_name: str, project: str, saved: dict[str, Any] | None,
              parent: dict[str, Any] | None) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if saved and saved.get("run_id") and saved.get("uri") == self.client.tracking_uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")  # the resumed run continues the same record
        else:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            tags = {"lmtune.run_dir": str(Path(run_dir).resolve())}
            if parent and parent.get("run_id"):
                tags["mlflow.parentRunId"] = parent["run_id"]
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        return {"run_id": self.run_id, "uri": self.client.tracking_uri}

    def log_params(self, params: dict[str, str], config_yaml: str) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: Status) -> None:
        self.client.set_terminated(self.run_id, status=status)
