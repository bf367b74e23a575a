"""trackio (Hugging Face's local-first tracker, W&B-like API; its dashboard: `trackio show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.trackers.base import Backend, Status


class TrackioBackend(Backend):
    name = "trackio"
    package = "trackio"

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run_dir: Path, run_name: str, project: str, saved: dict[str, Any] | None,
              parent: dict[str, Any] | None) -> dict[str, Any]:
        import trackio

        self.run = trackio.init(project=project, name=run_name, resume="allow" if saved else "never",
                                group=(parent or {}).get("group"))
        return {"name": run_name, "group": run_name}

    def log_params(self, params: dict[str, str], config_yaml: str) -> None:
        if self.run.config is None:
            self.run.config = {}
        self.run.config.update(params)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import trackio

        trackio.log(metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        import trackio

        trackio.log({k: float(v) for k, v in tags.items() if _number(v)})  # e.g. final.validation.accuracy

    def log_artifacts(self, paths: list[Path]) -> None:
        pass  # trackio keeps metrics only

    def finish(self, status: Status) -> None:
        import trackio

        trackio.finish()


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
