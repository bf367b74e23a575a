"""TensorBoard event files in ``RUN/tensorboard`` (PyTorch's SummaryWriter; `tensorboard --logdir RUN`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.trackers.base import Backend, Status

FOLDER = "tensorboard"


class TensorBoardBackend(Backend):
    name = "tensorboard"
    package = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run_dir: Path, run_name: str, project: str, saved: dict[str, Any] | None,
              parent: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(run_dir) / FOLDER
        self.writer = SummaryWriter(log_dir=str(folder))
        return {"log_dir": str(folder)}

    def log_params(self, params: dict[str, str], config_yaml: str) -> None:
        self.writer.add_text("config", f"```\n{config_yaml}\n```", 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("summary", "\n".join(f"- {k}: {v}" for k, v in tags.items()), 0)

    def log_artifacts(self, paths: list[Path]) -> None:
        pass  # the event files live in the run directory already

    def finish(self, status: Status) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()
