"""Choose the mixed precision and thread count for this machine."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 instructions (AVX512-BF16 or AMX): there bf16 autocast is ~2.4x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, use_cuda: bool) -> str:
    """``auto`` → bf16 where the device computes it natively, else fp16 (GPU) or fp32 (CPU).

    Returns one of accelerate's ``mixed_precision`` values: ``bf16``, ``fp16`` or ``no``.
    """
    if requested == "fp32":
        return "no"
    if requested in ("bf16", "fp16"):
        return requested
    if use_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "no"


def default_threads(processes: int) -> int:
    """Physical cores shared between the local processes (hyperthreads only add contention)."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, cores // max(1, processes))

