"""Weights & Biases (``WANDB_MODE=offline`` logs without a network, for `wandb sync` later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.trackers.base import Backend, Status


class WandbBackend(Backend):
    name = "wandb"
    package = "wandb"
    max_param_length = 10000

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run_dir: Path, run_name: str, project: str, saved: dict[str, Any] | None,
              parent: dict[str, Any] | None) -> dict[str, Any]:
        import wandb

        self.run = wandb.init(project=project, name=run_name, id=(saved or {}).get("id"), resume="allow",
                              dir=str(run_dir), group=(parent or {}).get("group"), reinit="create_new")
        return {"id": self.run.id, "group": run_name}

    def log_params(self, params: dict[str, str], config_yaml: str) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.run.summary.update(tags)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.run.save(str(path / "*") if path.is_dir() else str(path), base_path=str(path.parent))

    def finish(self, status: Status) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
