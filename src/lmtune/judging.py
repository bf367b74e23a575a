"""Judges: what scores texts for lmtune. A judge is either a classification run (the probability of one of its
labels, for the prompt and completion together or the completion alone) or a Python function ``module:function``
given (prompt, completions) and returning one score per completion. `lmtune pairs` ranks samples with one;
``replies.judge`` scores the replies a run generates during training."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.inference import load

Judge = Callable[[Any, list[str]], list[float]]


def judge_from(spec: str, label: str | None, reply_only: bool, keys: tuple[str, str] = ("--judge", "--label")) -> Judge:
    """The judge ``spec`` names (a run directory or module:function); ``keys`` name the two settings in errors."""
    if Path(spec).is_dir():
        return _classifier_judge(spec, label, reply_only, keys)
    module, _, name = spec.partition(":")
    if not name:
        raise LmtuneError(f"{keys[0]}: {spec!r} is neither a run directory nor module:function")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise LmtuneError(f"{keys[0]}: cannot import {spec} ({err})") from None
    if label is not None:
        raise LmtuneError(f"{keys[1]}: only for a classification run as the judge")
    return function


def _classifier_judge(run_dir: str, label: str | None, reply_only: bool, keys: tuple[str, str]) -> Judge:
    judge = load(run_dir)
    if not judge.task.capabilities.class_labels:
        raise LmtuneError(f"{keys[0]} {run_dir}: task {judge.config.task!r} has no class labels to score by")
    names = judge.task.label_names()
    if label not in names:
        raise LmtuneError(f"{keys[1]}: {label!r} is not a label of {run_dir}; it has {', '.join(map(repr, names))}")

    def score(prompt: Any, completions: list[str]) -> list[float]:
        lead = "" if reply_only or not isinstance(prompt, str) else prompt
        return [p["scores"][label] for p in judge.predict([lead + c for c in completions])]

    return score
