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


def resolve_attention(requested: str, mixed_precision: str, use_cuda: bool) -> str:
    """``auto`` → eager attention for bf16 training on CPU, SDPA otherwise.

    Measured on MiniLM-L6 (batch 32, 24 tokens, 2 cores): a bf16 training step takes 248 ms with
    eager attention and 377 ms with SDPA, whose CPU flash-attention backward is slow on short
    sequences; in fp32 and on GPUs SDPA is as fast or faster.
    """
    if requested != "auto":
        return requested
    return "eager" if mixed_precision == "bf16" and not use_cuda else "sdpa"
