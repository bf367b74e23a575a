"""Full fine-tuning over 2 torchrun processes on this machine: DDP (a whole copy of the weights, gradients and
optimizer state in each process) against FSDP2 (`train.fsdp=true`: each process holds half), side by side.

The decoder is built from a published architecture's config with random weights, as in `memory_scale.py` (same
rows: prompt/completion pairs from TinyStories, the loss on the completion). Both sides run the same `lmtune
train` of one epoch, batch ``--batch-size`` per process, bf16 autocast, one thread per process. Figures: the peak
resident memory of each process and of both together (sampled every 50 ms from this process), lmtune's memory
estimate of one process, seconds per optimizer step, and the validation loss of the final model.

    python benchmarks/fsdp_memory.py [--models smollm2-135m,qwen2.5-0.5b --rows 8 --length 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from memory_scale import add_row_arguments, prepare

from lmtune.serving.process import free_port

REPO = Path(__file__).resolve().parents[1]


def run_side(work: Path, fsdp: bool, args: argparse.Namespace, out: Path) -> dict:
    """One `torchrun ... lmtune train` with its memory sampled; its figures."""
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump({
        "task": "sft", "model": str(work / "model"), "strategy": {"name": "full"},
        "data": {"train": str(work / "train.jsonl"), "validation": str(work / "validation.jsonl")},
        "train": {"epochs": 1, "batch_size": args.batch_size, "lr": args.lr, "warmup": 0.0, "max_length": args.length,
                  "precision": "bf16", "eval_every": 0, "eval_train_samples": 0, "log_every": 1, "fsdp": fsdp},
        "output": str(out / "run"),
    }))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "lmtune", "train", str(config)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_each: dict[int, int] = {}
    peak_both = 0
    while proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
            workers = [c for c in children if "lmtune" in " ".join(c.cmdline())]
            sizes = {c.pid: c.memory_info().rss for c in workers}
        except psutil.Error:
            continue
        for pid, size in sizes.items():
            peak_each[pid] = max(peak_each.get(pid, 0), size)
        peak_both = max(peak_both, sum(sizes.values()))
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"failed": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"}
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {"peak_process_mib": max(peak_each.values()) / 2**20, "peak_both_mib": peak_both / 2**20,
            "estimate_mib": metrics["memory_estimate_mib"], "step_seconds": metrics["step_seconds"],
            "validation_loss": metrics["validation"]["loss"], "steps": metrics["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m")
    add_row_arguments(parser, rows=8, validation_rows=2, length=256, min_length=128, batch_size=1, lr=1e-4,
                      work="/tmp/lmtune-fsdp-memory")
    parser.add_argument("--sides", default="ddp,fsdp")
    args = parser.parse_args()
    out = sys.stdout
    for architecture in args.models.split(","):
        work = prepare(args, architecture)
        out.write(f"\n{architecture}: full fine-tuning (SFT), 2 processes, one epoch over {args.rows} rows "
                  f"({args.min_length}-{args.length} tokens), batch {args.batch_size} per process, bf16\n")
        out.write(f"{'side':<6} {'peak/process MiB':>16} {'both MiB':>9} {'estimate':>9} {'est/peak':>8} "
                  f"{'s/step':>7} {'val loss':>9} {'steps':>5}\n")
        for name in args.sides.split(","):
            fsdp = name == "fsdp"
            with tempfile.TemporaryDirectory() as tmp:
                r = run_side(work, fsdp, args, Path(tmp))
            if "failed" in r:
                out.write(f"{name:<6} failed: {r['failed']}\n")
                continue
            out.write(f"{name:<6} {r['peak_process_mib']:>16.0f} {r['peak_both_mib']:>9.0f} {r['estimate_mib']:>9} "
                      f"{r['estimate_mib'] / r['peak_process_mib']:>8.2f} {r['step_seconds']:>7.2f} "
                      f"{r['validation_loss']:>9.4f} {r['steps']:>5}\n")
            out.flush()


if __name__ == "__main__":
    main()
