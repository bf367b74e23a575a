"""Does domain-adaptive pretraining (masked LM on the task's own unlabelled text) help fine-tuning?

Arm "plain": fine-tune the bundled MiniLM on --labelled SST-2 rows. Arm "dapt": first continue its
pretraining with ``task: masked_lm`` (whole-word masking) on --unlabelled other SST-2 training
sentences (their labels unused), then fine-tune that run directory the same way. Both arms use the
same rows, steps, learning rate and seeds, and are scored on the 872 dev sentences; mean ± std over seeds.

    python benchmarks/dapt_sst2.py [--labelled 1000 --unlabelled 20000 --mlm-steps 600 --seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"


def _slices(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    labelled = out / "labelled.tsv"
    labelled.write_text("\n".join([header, *rows[: args.labelled]]) + "\n", encoding="utf-8")
    unlabelled = out / "unlabelled.txt"  # the sentences only, one document per line
    sentences = [row.split("\t")[0] for row in rows[args.labelled: args.labelled + args.unlabelled]]
    unlabelled.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return labelled, unlabelled


def fine_tune(model: str, labelled: Path, seed: int, args: argparse.Namespace, out: Path) -> float:
    import lmtune

    metrics = lmtune.train({
        "task": "classification", "model": model,
        "data": {"train": str(labelled), "validation": str(SST2 / "dev.tsv"), "text": "sentence"},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "max_length": 66, "seed": seed,
                  "eval_train_samples": 0},
        "output": str(out),
    }, show_diagnosis=False)
    return 100 * metrics["validation"]["accuracy"]  # a fraction in metrics.json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--unlabelled", type=int, default=20000)
    parser.add_argument("--mlm-steps", type=int, default=600)
    parser.add_argument("--mlm-lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    import lmtune

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        labelled, unlabelled = _slices(args, out)
        mlm = lmtune.train({
            "task": "masked_lm", "model": "bundled:minilm",
            "data": {"train": str(unlabelled), "validation_split": 0.02},
            "train": {"max_steps": args.mlm_steps, "batch_size": 32, "lr": args.mlm_lr, "max_length": 64,
                      "eval_every": max(args.mlm_steps // 3, 1), "eval_train_samples": 0},
            "lm": {"whole_word_mask": True, "pseudo_perplexity_samples": 64},
            "output": str(out / "mlm"),
        }, show_diagnosis=False)
        log = (out / "mlm" / "metrics.jsonl").read_text().splitlines()
        curve = [line for line in log if '"validation"' in line]
        results = {"plain": [], "dapt": []}
        for seed in range(args.seeds):
            results["plain"].append(fine_tune("bundled:minilm", labelled, seed, args, out / f"plain-{seed}"))
            results["dapt"].append(fine_tune(str(out / "mlm"), labelled, seed, args, out / f"dapt-{seed}"))
    write = sys.stdout.write
    after = mlm["validation"]
    write(f"masked-LM adaptation: {args.mlm_steps} steps x 32 on {args.unlabelled} unlabelled SST-2 sentences "
          f"(whole-word masking, lr {args.mlm_lr}); validation after: loss {after['loss']:.3f}, "
          f"accuracy {after['accuracy']:.1f}%, pseudo-perplexity {after['pseudo_perplexity']:.1f}\n")
    write(f"  {len(curve)} evaluations: " + " | ".join(curve) + "\n")
    write(f"fine-tuning: {args.labelled} labelled rows x {args.epochs} epochs, lr {args.lr}, "
          f"seeds 0..{args.seeds - 1}; dev accuracy (872)\n")
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        each = ", ".join(f"{v:.2f}" for v in values)
        write(f"  {name:>5}: {statistics.mean(values):.2f}% ± {spread:.2f}  ({each})\n")
    gain = statistics.mean(results["dapt"]) - statistics.mean(results["plain"])
    write(f"domain-adaptive pretraining changes dev accuracy by {gain:+.2f} points\n")


if __name__ == "__main__":
    main()
