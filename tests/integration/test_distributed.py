"""The same job as 2 CPU processes under torchrun (gloo): one run directory, one writer, a clean exit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from lmtune.serving.process import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_torchrun_two_cpu_processes(sst2_slice, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "lmtune", "train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
        f"data.validation={sst2_slice['dev']}", f"output={out}", "train.epochs=1", "train.batch_size=16",
        "train.eval_every=3", "train.log_every=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) == 1  # the summary comes from rank 0 only
    summary = json.loads(result.stdout)
    assert summary["processes"] == 2
    assert summary["step"] == 7  # 240 rows / 16 = 15 batches → 7 per process (tail cut to stay in step)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((x["split"], x["step"]) for x in lines)
    assert counts and max(counts.values()) == 1  # written by the main process only
    assert [x["step"] for x in lines if x["split"] == "validation"] == [3, 6, 7]
    # the learning rate follows the schedule of 7 optimizer steps, as in one process (not one step per process)
    import torch

    from lmtune.loader import load_config
    from lmtune.training.optim import build_scheduler

    cfg = load_config(REPO / "examples" / "sst2.yaml", ["train.epochs=1"]).train
    scheduler = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr), cfg, 7)
    expected = []
    for _ in range(7):
        scheduler.step()
        expected.append(scheduler.get_last_lr()[0])
    logged = [x["lr"] for x in lines if x["split"] == "train"]
    assert logged == pytest.approx(expected) and logged[-2] > 0
    assert {p.name for p in (out / "checkpoints" / "step-7").iterdir()} >= {"random_states_0.pkl",
                                                                             "random_states_1.pkl"}
    assert (out / "model" / "model.safetensors").is_file()
    # every process evaluated its share; the gathered metrics cover the whole dev slice
    assert sum(map(sum, json.loads((out / "metrics.json").read_text())["validation"]["confusion_matrix"])) == 120
