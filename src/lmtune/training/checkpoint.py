"""Atomic checkpoints: model, optimizer, scheduler, RNG states and data position.

A checkpoint is written into a hidden temporary directory and renamed into place only when
complete, so a run killed at any moment leaves either the old set of checkpoints or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where training is: enough, with the saved RNG and optimizer states, to resume exactly."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Current 0-based epoch."""
    batch: int = 0
    """Micro-batches of the current epoch already consumed by each process."""
    samples: int = 0
    """Training examples seen, over all processes."""
    train_seconds: float = 0.0
    """Wall time spent in training steps (evaluation excluded)."""
    epoch_start_seconds: float = 0.0
    """``train_seconds`` when the current epoch began (for per-epoch timings)."""
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    """Evaluations since the watched metric last improved (early stopping)."""
    stopped_early: bool = False
    restored_step: int | None = None
    """Step whose weights became the final model (restore_best), when not the last step."""
    last_validation: dict[str, Any] | None = None
    """Metrics of the latest evaluation, so the end of training need not evaluate again."""
    last_validation_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, if any (temporary directories are ignored)."""
    steps = [(_step(path), path) for path in _complete(run_dir)]
    return max(steps)[1] if steps else None


def save_checkpoint(accelerator: Any, state: TrainState, run_dir: Path, keep: int, extra_files: list[Path]) -> Path:
    """Write ``checkpoints/step-N`` atomically on every process; rotate old ones on the main process.

    Args:
        accelerator: the run's accelerator (its registered model, optimizer and scheduler are saved).
        state: training position; written as ``trainer_state.json``.
        run_dir: the run directory.
        keep: how many recent checkpoints to keep besides the best one.
        extra_files: files copied in for reproducibility (resolved config, versions).
    """
    final = checkpoint_dir(run_dir) / f"step-{state.step}"
    tmp = checkpoint_dir(run_dir) / f".tmp-step-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state.to_json(), indent=2))
        for path in extra_files:
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _rotate(run_dir, keep, state.best_step)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler and RNG states; return the training position."""
    accelerator.load_state(str(path))
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


def _complete(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]


def _step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _rotate(run_dir: Path, keep: int, best_step: int | None) -> None:
    paths = sorted(_complete(run_dir), key=_step)
    for path in paths[:-keep]:
        if _step(path) != best_step:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush file contents to disk before the rename that publishes them."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
