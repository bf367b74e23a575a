"""Frozen-layer caching on SST-2: cost of each epoch with the cache, against the same run without it.

    python benchmarks/frozen_cache.py                 # 4,000 rows, 3 epochs, head and freeze (4 of 6 blocks)

The first epoch's cost includes computing the cache. Targets: for ``head`` the epochs after the first
cost <= 0.2x the first; for ``freeze`` with 4 of 6 blocks frozen, <= 0.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"


def run(strategy: dict, cache: str, args: argparse.Namespace, out: Path) -> dict:
    import lmtune

    run_dir = out / f"{strategy['name']}-{cache}"
    metrics = lmtune.train({
        "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "text": "sentence",
                 "max_train_samples": args.rows},
        "strategy": {**strategy, "cache": cache},
        "train": {"epochs": args.epochs, "batch_size": 32, "max_length": 66, "seed": 42},
        "output": str(run_dir),
    })
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x["train_seconds"] for x in lines if x["split"] == "epoch"]
    epochs[0] += metrics["cache_seconds"]
    return {"epochs": epochs, "accuracy": metrics["validation"]["accuracy"], "loss": metrics["validation"]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, target in (({"name": "head"}, 0.2), ({"name": "freeze", "layers": 4}, 0.5)):
            cached = run(strategy, "memory", args, Path(tmp))
            plain = run(strategy, "off", args, Path(tmp))
            later = sum(cached["epochs"][1:]) / max(1, len(cached["epochs"]) - 1)
            ratio = later / cached["epochs"][0]
            print(f"{strategy['name']:<7} cached epochs (s): {', '.join(f'{t:.1f}' for t in cached['epochs'])} "
                  f"| uncached: {', '.join(f'{t:.1f}' for t in plain['epochs'])}")
            print(f"{'':<7} later/first epoch with cache: {ratio:.3f} (target <= {target}); "
                  f"speed-up of a later epoch vs uncached: {plain['epochs'][-1] / cached['epochs'][-1]:.1f}x; "
                  f"dev accuracy cached {cached['accuracy']:.4f} vs uncached {plain['accuracy']:.4f}, "
                  f"loss {cached['loss']:.4f} vs {plain['loss']:.4f}")


if __name__ == "__main__":
    main()
