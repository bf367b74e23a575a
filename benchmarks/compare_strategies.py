"""`lmtune compare` over five strategies on a few thousand SST-2 rows.

Runs the comparison twice: once with every trial run to completion (the reference: each strategy's
real result, and the cost of one full fine-tune), then as a user would, with pruning and caching.
Prints both leaderboards, the cost of the pruned comparison as a ratio to one full fine-tune
(target <= 2x), and whether its winner's dev accuracy is within 0.5 points of the best strategy
run to completion.

    python benchmarks/compare_strategies.py --rows 3000 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
STRATEGIES = ["full", "freeze", "head", "lora", "bitfit"]


def main() -> None:
    from lmtune.comparison import compare
    from lmtune.loader import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config({
            "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "text": "sentence",
                     "max_train_samples": args.rows},
            "train": {"epochs": args.epochs, "batch_size": 32, "max_length": 66, "seed": 42},
            "output": str(Path(tmp) / "run"),
        })
        start = time.perf_counter()
        reference = compare(config, STRATEGIES, out_dir=Path(tmp) / "complete", prune=False)
        reference_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pruned = compare(config, STRATEGIES, out_dir=Path(tmp) / "pruned", prune=True)
        pruned_seconds = time.perf_counter() - start
    full = next(r for r in reference.rows if r.strategy == "full")
    best = reference.rows[0]
    winner = next(r for r in reference.rows if r.strategy == pruned.winner)
    print(f"SST-2, {args.rows} rows x {args.epochs} epochs, dev = 872 sentences\n")
    print(f"every strategy to completion ({reference_seconds:.0f} s):\n{reference.text()}\n")
    print(f"as a user runs it, pruned + cached ({pruned_seconds:.0f} s):\n{pruned.text()}\n")
    print(f"cost of the comparison / one full fine-tune: {pruned_seconds / full.wall_seconds:.2f}x "
          f"({pruned_seconds:.0f} s / {full.wall_seconds:.0f} s; target <= 2x)")
    gap = 100 * (best.mean - winner.mean)
    print(f"winner {pruned.winner}: {100 * winner.mean:.2f}% run to completion; best strategy {best.strategy}: "
          f"{100 * best.mean:.2f}% -> {gap:.2f} points behind ({'within' if gap <= 0.5 else 'NOT within'} 0.5)")


if __name__ == "__main__":
    main()
