"""OMP_DYNAMIC=TRUE makes PyTorch's bf16 matrix products on a busy CPU return unwritten memory (`lmtune.openmp`):
importing lmtune turns it off, whether torch was imported first or not."""

import os
import subprocess
import sys

import pytest

DYNAMIC_NOW = """
import ctypes, pathlib, torch
lib = sorted((pathlib.Path(torch.__file__).parent / "lib").glob("libgomp*.so*")) or ["libgomp.so.1"]
print("dynamic", ctypes.CDLL(str(lib[0])).omp_get_dynamic())
"""


@pytest.mark.parametrize("first", ["import lmtune; import torch", "import torch; import lmtune"])
def test_importing_lmtune_turns_dynamic_openmp_threads_off(first):
    done = subprocess.run([sys.executable, "-c", f"{first}\nimport os; print('env', os.environ['OMP_DYNAMIC'])\n"
                           + DYNAMIC_NOW], capture_output=True, text=True, env={**os.environ, "OMP_DYNAMIC": "TRUE"},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["env", "FALSE", "dynamic", "0"]
    assert done.stderr.strip().splitlines() == ["lmtune: OMP_DYNAMIC=TRUE turned off: with it PyTorch's bf16 matrix "
                                                "products on CPU return unwritten memory when the machine is busy"]


def test_without_the_variable_nothing_changes_or_is_said():
    env = {k: v for k, v in os.environ.items() if k != "OMP_DYNAMIC"}
    done = subprocess.run([sys.executable, "-c", "import lmtune, os; print(os.environ.get('OMP_DYNAMIC'))"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert (done.stdout.strip(), done.stderr) == ("None", "")
