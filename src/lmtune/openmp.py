"""OpenMP's dynamic thread count, kept off before any tensor work.

With ``OMP_DYNAMIC=TRUE`` the OpenMP runtime may start fewer threads than asked for when the machine is loaded,
and PyTorch's bf16 matrix products on CPU (oneDNN) plan their work for the threads they asked for: the part meant
for the missing thread is never written. Measured on this project's CPU (AMX, torch 2.13, load about 1 on 2
cores): a 320x384 by 384x1536 bf16 `F.linear` came back wrong by up to 2e38, NaN included, and every `lmtune
train` in bf16 stopped with a NaN loss at step 2. fp32 was unaffected.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("lmtune")

VARIABLE = "OMP_DYNAMIC"


def keep_thread_count_fixed() -> bool:
    """Turn dynamic OpenMP threads off if the environment turned them on; whether it had to (and said so).

    Before torch is imported the variable is enough (the runtime reads it when it loads); after, the runtime's
    own switch is set for this thread, the one that trains or predicts."""
    if os.environ.get(VARIABLE, "").strip().lower() != "true":
        return False
    os.environ[VARIABLE] = "FALSE"
    if "torch" in sys.modules:
        _runtime_switch_off()
    log.warning("lmtune: %s=TRUE turned off: with it PyTorch's bf16 matrix products on CPU return unwritten "
                "memory when the machine is busy", VARIABLE)
    return True


def _runtime_switch_off() -> None:
    """``omp_set_dynamic(0)`` in the OpenMP runtime torch loaded (its own libgomp, or the system's)."""
    import torch

    for library in [*sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*")), "libgomp.so.1"]:
        try:
            runtime = ctypes.CDLL(str(library))
        except OSError:
            continue
        runtime.omp_set_dynamic(0)
        return
