"""Overfitting on a small SST-2 slice: does the diagnosis see it, and do the remedies help?

Trains the bundled MiniLM (full fine-tuning) on the first 500 SST-2 training rows for 10 epochs,
with and without remedies, over 3 seeds, and evaluates each epoch on the 872-row dev set:

- plain: no early stopping, no weight restore, no extra regularization (the model's own dropout,
  weight decay 0.01), the final weights are what the user gets;
- remedies: early stopping on dev accuracy (patience 3, best weights restored), weight decay
  0.1, dropout 0.2, label smoothing 0.1, augmentation (delete/swap/insert, 10% of words,
  half of the examples each epoch).

Prints the diagnosis of every plain run (it should say overfitting) and dev accuracy per seed,
side by side, with the means (target: remedies > plain).

    python benchmarks/overfitting.py [--rows 500 --epochs 10 --seeds 0 1 2 --out /tmp/lmtune-overfit]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"

VARIANTS = {
    "plain": {"early_stopping": {"restore_best": False}},
    "remedies": {
        "early_stopping": {"metric": "accuracy", "patience": 3, "restore_best": True},
        "regularization": {"weight_decay": 0.1, "dropout": 0.2, "label_smoothing": 0.1},
        "augmentation": {"methods": ["delete", "swap", "insert"], "rate": 0.1, "probability": 0.5},
    },
}


def config(args: argparse.Namespace, variant: str, seed: int) -> dict:
    return {
        "model": "bundled:minilm",
        "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "text": "sentence",
                 "max_train_samples": args.rows},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "seed": seed, "max_length": 66,
                  "eval_train_samples": args.rows},
        **VARIANTS[variant],
        "output": str(args.out / f"{variant}-s{seed}"),
    }


def main() -> None:
    import lmtune
    from lmtune.diagnosis import diagnose

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lmtune-overfit"))
    args = parser.parse_args()

    accuracy: dict[str, list[float]] = {v: [] for v in VARIANTS}
    states: dict[str, list[str]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            metrics = lmtune.train(config(args, variant, seed))  # a finished run is a no-op: re-runs are cheap
            accuracy[variant].append(metrics["validation"]["accuracy"])
            report = diagnose(args.out / f"{variant}-s{seed}")
            states[variant].append(report.state)
            if variant == "plain":
                print(f"\n--- diagnosis of plain, seed {seed} ---\n{report.text()}")

    print(f"\n{args.rows} SST-2 rows x {args.epochs} epochs, full fine-tuning of bundled:minilm, dev = 872 rows")
    print(f"{'seed':>6} " + " ".join(f"{v:>12}" for v in VARIANTS))
    for i, seed in enumerate(args.seeds):
        print(f"{seed:>6} " + " ".join(f"{accuracy[v][i]:>12.4f}" for v in VARIANTS))
    means = {v: statistics.mean(a) for v, a in accuracy.items()}
    print(f"{'mean':>6} " + " ".join(f"{means[v]:>12.4f}" for v in VARIANTS))
    print("diagnosis: " + "; ".join(f"{v}: {', '.join(s)}" for v, s in states.items()))
    flagged = sum(s == "overfitting" for s in states["plain"])
    print(f"plain runs diagnosed as overfitting: {flagged}/{len(args.seeds)}")
    print(f"remedies - plain (mean dev accuracy): {means['remedies'] - means['plain']:+.4f} "
          f"({'remedies win' if means['remedies'] > means['plain'] else 'remedies do NOT win'})")


if __name__ == "__main__":
    main()
