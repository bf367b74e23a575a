"""The run directory: its files, its compatibility checks, and atomic writes into it."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lmtune.config import RunConfig, config_to_dict, parse_config
from lmtune.errors import ConfigError, LmtuneError
from lmtune.integrity import FileCheckError, check_model_dir, read_json_object, read_yaml, usual_modes
from lmtune.runlock import LOCK_FILE

CONFIG = "config.yaml"
TASK = "task.json"
VERSIONS = "versions.json"
FINAL_METRICS = "metrics.json"
HARNESS = "harness.json"
"""`lmtune eval RUN --harness ...`: benchmark scores before and after tuning (read by report and diagnose)."""
MODEL = "model"
STATUS = "status.json"
"""Why an unfinished run stopped (failed or killed), for `lmtune runs`; removed when the run finishes."""
_MODEL_TMP = ".model-"
METRICS_LOG = "metrics.jsonl"
"""One JSON line per log or evaluation event (`lmtune.training.metrics_log` writes it)."""
EXAMPLE_LOSSES_LOG = "example_losses.jsonl"
"""Per-example losses of the fixed training sample at each evaluation (label-noise evidence)."""
LOG_FILES = (METRICS_LOG, EXAMPLE_LOSSES_LOG)

ABSENT_MEANT = {"early_stopping.restore_best": False, "train.eval_train_samples": 0}
"""Settings added after the first release whose absence from a saved config means something other than
today's default: runs written before them ended with their last weights and scored no training sample.
Every other added setting's default is what older runs did."""

RESUMABLE_CHANGES = {"train.threads", "train.log_every", "train.eval_batch_size", "output"}
"""Keys that may differ when a run is resumed: they change speed or logging, not the result."""
RESUMABLE_SECTIONS = {"tracking"}
"""Sections that may differ when a run is resumed (where it is reported, not what it is)."""


def prepare_run_dir(cfg: RunConfig) -> tuple[Path, bool, RunConfig]:
    """Check that the output directory can hold this run.

    Returns:
        (run directory, whether it already holds a finished run of this same config, the config to train
        with: ``cfg``, or for a run written by an older lmtune, ``cfg`` with that version's behaviour for the
        settings it did not have, see `ABSENT_MEANT`).

    Raises:
        LmtuneError: not writable, not an lmtune run, or a run of an incompatible config.
    """
    run_dir = check_output(cfg)
    if (run_dir / CONFIG).exists():
        cfg = _check_compatible(run_dir, cfg)
        return run_dir, (run_dir / FINAL_METRICS).is_file() and (run_dir / MODEL).is_dir(), cfg
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise LmtuneError(f"output: {run_dir} is not empty and is not an lmtune run directory; choose another output")
    return run_dir, False, cfg


def check_output(cfg: RunConfig) -> Path:
    """The run directory, once it is known that it is (or can be created as) a directory."""
    run_dir = Path(cfg.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise LmtuneError(f"output: {run_dir} exists and is not a directory")
    if not run_dir.exists():
        _check_writable(run_dir)
    return run_dir


def write_header(run_dir: Path, cfg: RunConfig, task_state: dict[str, Any]) -> None:
    """Write the resolved config, the task state (e.g. labels) and library versions."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmtuneError(f"output: cannot create {run_dir} ({err.strerror or err})") from None
    write_text_atomic(run_dir / CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_text_atomic(run_dir / TASK, json.dumps({"task": cfg.task, **task_state}, indent=2))
    write_text_atomic(run_dir / VERSIONS, json.dumps(library_versions(), indent=2))


def read_run(run_dir: str | Path, finished: bool = True) -> tuple[Path, RunConfig, dict[str, Any]]:
    """(run directory, its config, its task state) for a (``finished``) run; a clear error otherwise."""
    path = Path(run_dir)
    if not path.is_dir() or not (path / CONFIG).exists():
        raise LmtuneError(f"{path}: not an lmtune run directory (no {CONFIG})")
    saved = read_yaml(path / CONFIG, "the run's resolved config")
    task_state = read_json_object(path / TASK, "the run's task state")
    if finished and not (path / MODEL).exists():
        raise LmtuneError(f"{path}: the run has no final model yet ({MODEL}/); finish it with `lmtune train`")
    if finished:
        check_model_dir(path / MODEL, "run's model")
    try:
        cfg = parse_config(_upgrade(saved))
    except ConfigError as err:
        raise FileCheckError(path / CONFIG, f"not a valid run config ({'; '.join(err.problems)})") from None
    return path, cfg, task_state


def read_log(run_dir: Path, file: str = METRICS_LOG) -> list[dict[str, Any]]:
    """The log's records. A last line without its newline is being written (or was cut by a kill) and is
    left out; any other line that is not a JSON object is an error naming the file and line."""
    path = run_dir / file
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FileCheckError(path, f"not text (invalid UTF-8 at byte {err.start}); the log is damaged") from None
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise FileCheckError(f"{path}:{number}", "not a JSON object; the log is damaged")
        records.append(record)
    return records


@contextmanager
def safetensors_os_errors(path: Path) -> Iterator[None]:
    """Raise a failed safetensors write as the OSError it is (``path``: where it was writing).

    safetensors reports a full disk as its own ``SafetensorError("... I/O error: No space left on device (os error
    28)")``, which passed every ``except OSError`` that cleans up a half-written checkpoint or model and says in one
    line what to fix: a full disk mid-checkpoint ended in a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from err


def save_model_atomic(run_dir: Path, save: Any) -> Path:
    """Call ``save(tmp_dir)`` and publish the result as ``RUN/model`` in one rename."""
    tmp = Path(tempfile.mkdtemp(prefix=_MODEL_TMP, dir=run_dir))
    try:
        with safetensors_os_errors(tmp):
            save(tmp)
        usual_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = run_dir / MODEL
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def remove_partial_model(run_dir: Path) -> None:
    """Delete final-model folders a killed process left half-written (never published, never read)."""
    for path in run_dir.glob(f"{_MODEL_TMP}*"):
        shutil.rmtree(path, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one rename: a reader sees the old file or the new one, never a part (the
    temporary name is unique, so two writers of one file cannot mix their halves)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("lmtune", "torch", "transformers", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def _check_compatible(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """``cfg`` as the run in ``run_dir`` was trained (legacy settings kept), or an error naming the differences."""
    saved = read_yaml(run_dir / CONFIG, "the run's resolved config")
    upgraded = _upgrade(saved)
    legacy = {key for key in ABSENT_MEANT if _lookup(saved, key) is _MISSING}
    diffs = [
        f"{key}: {old!r} → {new!r}"
        for key, old, new in _diff(upgraded, config_to_dict(cfg))
        if key not in RESUMABLE_CHANGES and key.split(".")[0] not in RESUMABLE_SECTIONS and key not in legacy
    ]
    if diffs:
        raise LmtuneError(
            f"output: {run_dir} holds a run of a different config ({'; '.join(diffs)}); "
            "it cannot be resumed with this one: choose another output or delete the directory"
        )
    if not legacy:
        return cfg
    values = config_to_dict(cfg)
    for key in legacy:
        section, name = key.split(".")
        values[section][name] = ABSENT_MEANT[key]
    return parse_config(values)


def _upgrade(saved: Any) -> Any:
    """A config saved by an older lmtune, as this one reads it: moved keys in their new place, keys added
    since then at their defaults (which is what that run used)."""
    from lmtune.config import MOVED

    if not isinstance(saved, dict):
        return saved
    saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for old, new in MOVED.items():
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        if old_key in saved.get(old_section, {}):
            saved.setdefault(new_section, {})[new_key] = saved[old_section].pop(old_key)

    for key, value in ABSENT_MEANT.items():  # what the writer did before the setting existed
        section, name = key.split(".")
        if _lookup(saved, key) is _MISSING:
            saved.setdefault(section, {})[name] = value

    def fill(values: dict, defaults: dict) -> dict:
        out = dict(values)
        for key, default in defaults.items():
            if key not in out:
                out[key] = default
            elif isinstance(default, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], default)
        return out

    return fill(saved, config_to_dict(RunConfig()))


_MISSING = object()


def _lookup(values: Any, key: str) -> Any:
    section, name = key.split(".")
    part = values.get(section) if isinstance(values, dict) else None
    return part.get(name, _MISSING) if isinstance(part, dict) else _MISSING


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _check_writable(run_dir: Path) -> None:
    """Fail early, before anything is written, if the run directory could not be created."""
    ancestor = run_dir.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LmtuneError(f"output: cannot create {run_dir}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LmtuneError(f"output: cannot write to {run_dir}: {ancestor} is not writable")
