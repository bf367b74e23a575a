"""Running lmtune and the Hugging Face Trainer side by side, each in its own process.

A benchmark script re-runs itself with ``--child NAME``; the child runs one side and prints its
figures, with its own wall time and peak RSS, as one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from lmtune.heap import peak_resident


def run_child(run: Callable[[Path], dict[str, Any]]) -> None:
    """Run one side in this process (in a temporary directory) and print its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(Path(tmp))
    # wall time from process start: imports, loading, tokenizing, training, evaluating, saving
    figures["wall_seconds"] = time.time() - psutil.Process().create_time()
    figures["peak_rss_mib"] = round(peak_resident() / 2**20, 1)
    sys.stdout.write("RESULT " + json.dumps(figures) + "\n")


def run_side(script: str, name: str, argv: list[str]) -> dict[str, Any]:
    """Run ``script --child name`` offline in a fresh process and return the figures it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, script, *argv, "--child", name], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))
