"""YAML plus ``a.b=c`` overrides → a :class:`RunConfig` checked field by field.

Every problem (unknown key, wrong type, bad value) is collected and reported at once in a
single :class:`ConfigError`, each naming the key, the bad value and what is allowed. Checks that need the
registered tasks and strategies are `lmtune.loader`'s, a layer above.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError
from lmtune.registry import did_you_mean

MOVED = {
    "train.weight_decay": "regularization.weight_decay",
    "train.max_grad_norm": "regularization.max_grad_norm",
}
"""Keys that changed section: configs using the old place get told the new one."""


@dataclass
class Parsed:
    """A config read and checked field by field, with every problem found so far."""

    config: RunConfig
    problems: list[str]
    source: str
    """Where it came from, for the error (a file path, or "config")."""
    data_keys: frozenset[str]
    """The ``data`` keys the config set (the others may take a task's defaults)."""


def read_config(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Parsed:
    """Read a YAML file (or a dict), apply ``key=value`` overrides and check every field; raise nothing for
    field problems (they are collected for one error), only for a file that cannot be read."""
    name = "config"
    if isinstance(source, dict):
        raw = dict(source)
    else:
        name = str(source)
        raw = _read_yaml(Path(source))
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    if "output" not in raw and not isinstance(source, dict):
        raw["output"] = str(Path("runs") / Path(source).stem)
    config = _build(RunConfig, raw, "", problems)
    problems += _validate_all(config)
    data = raw.get("data")
    return Parsed(config, problems, name, frozenset(data) if isinstance(data, dict) else frozenset())


def parse_config(source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A config checked field by field only, with local paths made absolute: for a run directory's saved config,
    which was fully checked when it was written (`lmtune.loader.load_config` checks new ones).

    Raises:
        ConfigError: naming every invalid key and value.
    """
    parsed = read_config(source, overrides)
    if parsed.problems:
        raise ConfigError(parsed.problems, source=parsed.source)
    return resolve_paths(parsed.config)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain data (tuples as lists), as written to ``RUN/config.yaml``."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(["file not found (expected a YAML run config)"], source=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text (byte {err.start})"], source=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"invalid YAML at {where}{reason}"], source=str(path)) from None
    if data is None:
        raise ConfigError(["empty file; expected a YAML mapping of config keys"], source=str(path))
    if not isinstance(data, dict):
        raise ConfigError([f"expected a YAML mapping of config keys, got {type(data).__name__}"], str(path))
    return data


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=2e-5")
        return
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            problems.append(f"override {item!r}: {part!r} is not a section")
            return
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``raw``, type-checking each field.

    A bad field is reported and left at its default, so that the remaining fields are still
    checked and every problem is reported in one go.
    """
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if f"{prefix}{key}" in MOVED:
            problems.append(f"{prefix}{key}: moved; write it as {MOVED[f'{prefix}{key}']}")
        elif key not in names:
            problems.append(f"{prefix}{key}: unknown key{did_you_mean(str(key), names)}; allowed: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name] if raw[name] is not None else {}, f"{prefix}{name}.", problems)
            continue
        good, value = _coerce(raw[name], hint)
        if good:
            values[name] = value
        else:
            problems.append(f"{prefix}{name}: {raw[name]!r} is not {_describe(hint)}")
    return cls(**values)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check ``value`` against a simple type hint, converting YAML strings like ``5e-5`` to floats."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        return type(None) in options, None
    for option in options:
        if option is bool and isinstance(value, bool):
            return True, value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if option is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return True, float(value)
            if isinstance(value, str):  # YAML 1.1 reads "5e-5" as a string
                try:
                    return True, float(value)
                except ValueError:
                    pass
        if option is str and isinstance(value, str):
            return True, value
        if typing.get_origin(option) is tuple:
            # a string is one item, or several separated by commas (``augmentation.methods=delete,swap``)
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
                return True, tuple(items)
    return False, value


def _describe(hint: Any) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return " or ".join(names.get(o, "a list of strings") for o in options)


def _validate_all(config: RunConfig) -> list[str]:
    problems = config.validate()
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        if dataclasses.is_dataclass(section):
            problems += section.validate()
    return problems


def resolve_paths(config: RunConfig) -> RunConfig:
    """Make local paths absolute so that the saved config works from any directory."""

    def resolve(value: str | None) -> str | None:
        if value is None or value.startswith("hf:"):
            return value
        path = Path(value).expanduser()
        looks_local = path.suffix or path.exists() or value.startswith((".", "/", "~"))
        return str(path.resolve()) if looks_local else value

    data = dataclasses.replace(
        config.data, **{k: resolve(getattr(config.data, k)) for k in ("train", "validation", "test")}
    )
    judge = config.replies.judge and str(Path(config.replies.judge).expanduser().resolve())  # a run directory
    return dataclasses.replace(config, data=data, output=str(Path(config.output).expanduser().resolve()),
                               replies=dataclasses.replace(config.replies, judge=judge))
