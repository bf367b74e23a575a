"""Which kernels computed a run (`lmtune.training.numerics`): what a resumed run compares with its checkpoint's."""

import subprocess
import sys
from pathlib import Path

from lmtune.training.numerics import describe, differences

SMALL_SIGNAL_STACK = """
import ctypes, json, sys, threading

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

ready = threading.Event()

def hold():  # a thread with an 8 KiB signal stack, alive while the first bf16 product asks for AMX
    buffer = ctypes.create_string_buffer(8192)
    stack = Stack(ctypes.cast(buffer, ctypes.c_void_p), 0, 8192)
    assert ctypes.CDLL(None).sigaltstack(ctypes.byref(stack), None) == 0
    ready.set()
    threading.Event().wait(30)

if sys.argv[1] == "small":
    threading.Thread(target=hold, daemon=True).start()
    ready.wait()
from lmtune.training.numerics import describe
print(json.dumps(describe()))
"""


def _described(case: str) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", SMALL_SIGNAL_STACK, case], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_thread_with_a_small_signal_stack_costs_the_process_its_amx_kernels():
    """Linux grants AMX only while every thread's signal stack can hold its registers; oneDNN then falls back
    silently for the whole process. `describe` reports what the process really got, not what the CPU has."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    plain, blocked = _described("plain"), _described("small")
    assert "AMX" not in blocked["instructions"]
    assert ("AMX" in plain["instructions"]) == (" amx_tile" in flags)  # this machine: AVX512 with AMX
    assert blocked["threads"] == plain["threads"] > 0 and plain["device"].startswith("cpu: ")


def test_a_checkpoint_s_kernels_are_compared_field_by_field():
    now = describe()
    assert differences({**now, "threads": now["threads"] + 1}, now) == f"threads {now['threads'] + 1} -> " \
        f"{now['threads']}"
    assert differences(dict(now), now) is None
    assert differences(None, now) is None  # a checkpoint written before kernels were recorded: nothing to say
    assert differences({"device": "cuda: NVIDIA H200", "torch": now["torch"]}, now) == \
        f"device cuda: NVIDIA H200 -> {now['device']}"
