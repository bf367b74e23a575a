"""Name → class registries with "did you mean ..." errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Maps a config name (``task: classification``) to the class that implements it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> str | None:
        """Return an error message if ``name`` is not registered, else None."""
        if name in self._entries:
            return None
        return f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; allowed: {', '.join(self.names())}"

    def get(self, name: str) -> type[T]:
        problem = self.check(name)
        if problem:
            raise KeyError(problem)
        return self._entries[name]
