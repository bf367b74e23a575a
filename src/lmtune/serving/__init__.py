"""`lmtune serve`: every run behind one HTTP API (predict, explain, OpenAI-compatible generation), micro-batched,
with limits, metrics, a graceful stop and a playground page."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Limits", "create_app", "run_server"]

_HOMES = {"Limits": "lmtune.serving.limits", "create_app": "lmtune.serving.app", "run_server": "lmtune.serving.server"}


def __getattr__(name: str) -> Any:
    # the CLI reads `Limits` to build every command's parser: the server stack (starlette, uvicorn, torch,
    # the models) loads only when a server is made
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lmtune.serving' has no attribute {name!r}")
