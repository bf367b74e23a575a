"""Handing the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing to do).

Freed tensors below glibc's mmap threshold stay with the process: its resident size then counts memory that the
next allocations will reuse. A long-running server trims after batches (`lmtune.serving.memory`); the memory
estimate trims before it reads the process's size, which after a 4-bit quantization of a 0.5B decoder held
2.5-4.0 GiB from one run to the next, for the same weights.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the heap's free pages to the OS (a few milliseconds)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
