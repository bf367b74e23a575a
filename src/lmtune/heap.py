"""Handing memory the process no longer uses back to the OS, and reading the process's peak.

Freed tensors below glibc's mmap threshold stay with the process (``malloc_trim`` returns them; elsewhere nothing
to do): its resident size then counts memory that the next allocations will reuse. A long-running server trims
after batches (`lmtune.serving.memory`); the memory estimate trims before it reads the process's size, which after
a 4-bit quantization of a 0.5B decoder held 2.5-4.0 GiB from one run to the next, for the same weights.

transformers maps safetensors files: a weight read from one stays resident as the file's pages, and they go only
when the last weight mapped from the file does. A weight converted (fp32 to bf16) leaves its pages behind until
then: making a 1.24B decoder's frozen base bf16 held 4.6 GiB of file pages beside 2.3 GiB of new tensors, the
run's peak. `drop_file_pages` hands a converted weight's pages back at once (they are the file's, unwritten:
read again from it if anything ever touches them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import resource
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

_MADV_DONTNEED = 4  # Linux


@cache
def _libc_function(name: str) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    if not library:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)  # malloc_trim: glibc only
    except (OSError, AttributeError):
        return None


def peak_resident() -> int:
    """Bytes: the most this process has held resident since it started.

    Linux's own high-water mark (``VmHWM``), not ``getrusage``'s ``ru_maxrss``: that one is kept across
    ``exec``, so a run started from a big process (a notebook kernel, pytest, a job runner) reported its parent's
    size as its own peak (measured: 3,085 MiB for a child of a 3 GiB process that held 13 MiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def trim_heap() -> None:
    """Return the heap's free pages to the OS (a few milliseconds)."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def weight_files() -> list[tuple[int, int, int]] | None:
    """(start address, end address, resident bytes) of each mapping of a ``.safetensors`` file in this process,
    from /proc/self/smaps; None where that file does not exist (not Linux)."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    found: list[tuple[int, int, int]] = []
    current: tuple[int, int] | None = None
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header: range, perms, ..., path
            current = tuple(int(x, 16) for x in head[0].split("-")) if line.endswith(".safetensors") else None
        elif current is not None and head and head[0] == "Rss:":
            found.append((*current, int(head[1]) * 1024))
    return found


def in_weight_file(tensor: torch.Tensor, files: list[tuple[int, int, int]]) -> bool:
    return any(low <= tensor.data_ptr() < high for low, high, _ in files)


def drop_file_pages(tensor: torch.Tensor, files: list[tuple[int, int, int]]) -> None:
    """Hand back the pages that only ``tensor``'s own bytes occupy, if they lie in a mapped weights file
    (``files``, from `weight_files`; a file's tensors share one storage, so its neighbours' pages, and the pages
    it shares with them, stay); anything else is left alone (dropping anonymous pages would zero them). Call it
    once nothing reads ``tensor`` any more: a page written since loading (a resumed run's weights) would go back
    to the file's bytes."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    madvise = _libc_function("madvise")
    if madvise is None or not any(low <= start and end <= high for low, high, _ in files):
        return
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
