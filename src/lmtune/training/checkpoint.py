"""Atomic checkpoints: model, optimizer, scheduler, RNG states and data position.

A checkpoint is written into a hidden temporary directory and renamed into place only when
complete, so a run killed at any moment leaves either the old set of checkpoints or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.integrity import FileCheckError, check_checkpoint, read_json_object, usual_modes, write_manifest
from lmtune.rundir import safetensors_os_errors
from lmtune.training import numerics

STATE_FILE = "trainer_state.json"
TMP_PREFIX = ".tmp-step-"
REQUIRED_FILES = (STATE_FILE, "optimizer.bin", "scheduler.bin", "random_states_0.pkl")
"""Files every checkpoint has (checked on checkpoints written before manifests existed)."""


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
    evaluated_step: int | None = None
    """The step whose evaluation and checkpoint were last done: a run resumed from the end of an epoch that was
    evaluated does not evaluate it again (a SIGTERM checkpoint there was not, and is)."""
    numerics: dict[str, Any] | None = None
    """The kernels of the process that wrote the checkpoint (`numerics.describe`): a resume elsewhere says what
    differs."""

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
    tmp = checkpoint_dir(run_dir) / f"{TMP_PREFIX}{state.step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with safetensors_os_errors(tmp):
            accelerator.save_state(str(tmp))  # every process writes its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state.numerics = numerics.describe(accelerator.device)
            (tmp / STATE_FILE).write_text(json.dumps(state.to_json(), indent=2))
            for path in extra_files:
                if path.is_file():
                    shutil.copy2(path, tmp / path.name)
            usual_modes(tmp)
            write_manifest(tmp)  # last: a checkpoint whose files do not match it is damaged
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _rotate(run_dir, keep, state.best_step)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoints stay as they were
        last = latest_checkpoint(run_dir)
        resume = f"resumes from {last.name}" if last else "starts again"
        raise LmtuneError(f"{err.filename or tmp}: cannot write checkpoint step-{state.step} "
                          f"({err.strerror or err}); fix that and run the same command again: the run {resume}") \
            from err
    accelerator.wait_for_everyone()
    return final


def resume_point(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that is complete and undamaged; newer damaged ones are skipped with a warning."""
    for path in sorted(_complete(run_dir), key=_step, reverse=True):
        try:
            check_checkpoint(path, REQUIRED_FILES)
        except FileCheckError as err:
            warn(f"checkpoint {path.name} is damaged ({err}); skipping it")
            continue
        return path
    return None


def load_checkpoint(accelerator: Any, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler and RNG states; return the training position."""
    try:
        accelerator.load_state(str(path))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as err:
        raise LmtuneError(f"{path}: cannot restore this checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); delete it to resume from an "
                          "earlier one") from err
    _check_random_state(accelerator, path)
    saved = read_json_object(path / STATE_FILE, "a training state", ["step", "epoch", "batch"])
    known = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in saved.items() if k in known})


def _check_random_state(accelerator: Any, path: Path) -> None:
    """That the checkpoint's random state is this process's now: accelerate only logs "Could not load random
    states" when it fails, and a resumed run would then draw other dropout masks than the run it continues."""
    import torch

    file = path / f"random_states_{accelerator.process_index}.pkl"
    try:
        saved = torch.load(file, weights_only=False)["torch_manual_seed"]
    except Exception as err:  # noqa: BLE001 - any failure to read it means the state was not restored
        raise LmtuneError(f"{file}: cannot read the saved random state ({type(err).__name__}); delete "
                          f"{path.name} to resume from an earlier checkpoint") from None
    if not torch.equal(torch.get_rng_state(), saved):
        raise LmtuneError(f"{file}: the random state was not restored; delete {path.name} to resume from an "
                          "earlier checkpoint")


def remove_partial(run_dir: Path) -> None:
    """Delete checkpoints that a killed process left half-written (never published, never read)."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for path in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def _complete(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    # published by a rename, so complete when written; `resume_point` checks that they are still whole
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]


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
