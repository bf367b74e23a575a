"""Which kernels compute a run: written with each checkpoint and in metrics.json, compared on resume.

The same run gives the same numbers bit for bit only on the same kernels. The instruction set picks them (on one
CPU model, MiniLM's validation loss after 3 SST-2 steps is 0.700507 with AMX's bf16 products, 0.700550 when oneDNN
is held to AVX512-BF16, 0.700548 held to AVX2), and so does the thread count (0.700566 on 1 thread): each is
deterministic, but a run resumed on another machine, or with another thread count, continues with other rounding
than the uninterrupted run would have had. AMX can also be missing on a CPU that has it: Linux grants a process
the AMX registers only while none of its threads has a signal stack too small to save them (one thread with an
8 KiB `sigaltstack`, the old fixed ``SIGSTKSZ``, is enough), and oneDNN then silently runs AVX512-BF16 kernels
for the whole process (measured: a 256 x 256 bf16 product moved from `avx10_1_512_amx` to
`avx512_core_bf16` with one such thread alive). So a resumed run states, in one line, what differs.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from functools import cache
from pathlib import Path
from typing import Any

import torch

_ARCH_GET_XCOMP_PERM = 0x1022
_XFEATURE_XTILEDATA = 1 << 18
_SYS_ARCH_PRCTL = 158  # x86-64


def describe(device: torch.device | None = None) -> dict[str, Any]:
    """The kernels this process computes with: the device, the instruction set PyTorch dispatches to (AMX when the
    process holds it), the intra-op thread count and PyTorch's version."""
    if device is not None and device.type == "cuda":
        return {"device": f"cuda: {torch.cuda.get_device_name(device)}", "torch": torch.__version__}
    return {"device": f"cpu: {_cpu_model()}", "instructions": _instructions(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """``"threads 2 -> 1; ..."`` for what differs between a checkpoint's kernels and this process's, or None
    (also for a checkpoint written before they were recorded)."""
    if not saved:
        return None
    changed = [f"{key} {saved[key]} -> {now[key]}" for key in now if key in saved and saved[key] != now[key]]
    return "; ".join(changed) or None


def _instructions() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability} with AMX" if _holds_amx() else capability


def _holds_amx() -> bool:
    """Whether this process may use AMX now. Asked after a bf16 product, which is when oneDNN requests it (the
    request is once per process: what it got then is what every later product runs on)."""
    if sys.platform != "linux" or platform.machine() != "x86_64" or "amx_tile" not in _cpu_flags():
        return False
    torch.ones(16, 16, dtype=torch.bfloat16) @ torch.ones(16, 16, dtype=torch.bfloat16)
    features = ctypes.c_uint64(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(features)) != 0:
        return False
    return bool(features.value & _XFEATURE_XTILEDATA)


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"
