"""Overfitting on a small SST-2 slice: does the diagnosis see it, and do the remedies help?

Trains the bundled MiniLM (full fine-tuning, lr 5e-5, batch 32) on the first 500 SST-2 training
rows for 10 epochs, evaluating at each epoch end, over 3 seeds. The 872 dev sentences are split in
two fixed halves: the first is the validation set (curves, early stopping, best-weight selection),
the second is the test set every variant is scored on, so that selecting on validation does not
inflate the figure reported.

- plain: no early stopping, no weight restore, the model's own dropout, weight decay 0.01;
- early stopping: on validation accuracy, patience 4, best weights restored;
- + R-Drop: early stopping and R-Drop (weight 1.0);
- remedies: early stopping, R-Drop, weight decay 0.1 and augmentation (delete/swap/insert, 10% of
  the words of half of the examples each epoch).

Prints the diagnosis of every plain run (it should say overfitting) and test accuracy per seed,
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

EARLY = {"metric": "accuracy", "patience": 4, "restore_best": True}
VARIANTS = {
    "plain": {"early_stopping": {"restore_best": False}},
    "early stopping": {"early_stopping": EARLY},
    "+ R-Drop": {"early_stopping": EARLY, "regularization": {"rdrop": 1.0}},
    "remedies": {
        "early_stopping": EARLY,
        "regularization": {"rdrop": 1.0, "weight_decay": 0.1},
        "augmentation": {"methods": ["delete", "swap", "insert"], "rate": 0.1, "probability": 0.5},
    },
}


def split_dev(out: Path) -> tuple[Path, Path]:
    """The dev set's first half (validation) and second half (test), as TSV files under ``out``."""
    header, *rows = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    half = len(rows) // 2
    out.mkdir(parents=True, exist_ok=True)
    validation, test = out / "validation.tsv", out / "test.tsv"
    validation.write_text(header + "".join(rows[:half]), encoding="utf-8")
    test.write_text(header + "".join(rows[half:]), encoding="utf-8")
    return validation, test


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace('+ ', 'plus-').replace(' ', '-').lower()}-s{seed}"


def config(args: argparse.Namespace, variant: str, seed: int, validation: Path, test: Path) -> dict:
    return {
        "model": "bundled:minilm",
        "data": {"train": str(SST2 / "train.tsv"), "validation": str(validation), "test": str(test),
                 "text": "sentence", "max_train_samples": args.rows},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "seed": seed, "max_length": 66},
        **VARIANTS[variant],
        "output": str(args.out / run_name(variant, seed)),
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

    validation, test = split_dev(args.out / "data")
    accuracy: dict[str, list[float]] = {v: [] for v in VARIANTS}
    states: dict[str, list[str]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            # a finished run is a no-op: re-running the benchmark only prints
            metrics = lmtune.train(config(args, variant, seed, validation, test), show_diagnosis=False)
            accuracy[variant].append(metrics["test"]["accuracy"])
            report = diagnose(args.out / run_name(variant, seed))
            states[variant].append(report.state)
            if variant == "plain":
                print(f"\n--- diagnosis of plain, seed {seed} ---\n{report.text()}")

    print(f"\n{args.rows} SST-2 rows x {args.epochs} epochs, full fine-tuning of bundled:minilm; "
          "test accuracy on the dev set's second half (436 rows)")
    print(f"{'seed':>6} " + " ".join(f"{v:>15}" for v in VARIANTS))
    for i, seed in enumerate(args.seeds):
        print(f"{seed:>6} " + " ".join(f"{accuracy[v][i]:>15.4f}" for v in VARIANTS))
    means = {v: statistics.mean(a) for v, a in accuracy.items()}
    print(f"{'mean':>6} " + " ".join(f"{means[v]:>15.4f}" for v in VARIANTS))
    print("diagnosis: " + "; ".join(f"{v}: {', '.join(s)}" for v, s in states.items()))
    flagged = sum(s == "overfitting" for s in states["plain"])
    print(f"plain runs diagnosed as overfitting: {flagged}/{len(args.seeds)}")
    print(f"remedies - plain (mean test accuracy): {means['remedies'] - means['plain']:+.4f} "
          f"({'remedies win' if means['remedies'] > means['plain'] else 'remedies do NOT win'})")


if __name__ == "__main__":
    main()
