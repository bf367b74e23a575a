"""lmtune vs the Hugging Face Trainer on the same SST-2 rows, three sides in one run.

Sides: the Trainer with its defaults (random batches), the Trainer with length-grouped batches
(`train_sampling_strategy="group_by_length"`), and lmtune with its defaults. Same model (bundled
MiniLM-L6), rows, epochs, batch size, learning rate, warmup, weight decay, clipping, precision, max
length, seed and threads. Each side runs in its own process so that peak memory is its own. Prints
train samples/s, whole-process wall time (imports to exit), peak RSS and dev accuracy (all 872 SST-2
dev sentences) of each, and lmtune's ratios to both Trainers.

    python benchmarks/sst2_vs_trainer.py                           # 20,000 rows, 1 epoch, three sides
    python benchmarks/sst2_vs_trainer.py --rows 3000               # the whole-process comparison
    python benchmarks/sst2_vs_trainer.py --sides lmtune --dense-embeddings   # an ablation of one speed-up
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sides import run_child, run_side

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"


def run_lmtune(args: argparse.Namespace, out: Path) -> dict:
    import lmtune

    metrics = lmtune.train(
        {
            "model": "bundled:minilm",
            "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "text": "sentence",
                     "max_train_samples": args.rows},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                      "precision": args.precision, "seed": args.seed,
                      "max_length": args.max_length, "threads": args.threads, "eval_every": 0,
                      "group_by_length": not args.no_grouping, "attention": args.attention,
                      "sparse_embeddings": not args.dense_embeddings, "fast_dropout": not args.torch_dropout,
                      "bf16_weights": not args.autocast_weights, "batch_tokens": args.batch_tokens},
            "regularization": {"weight_decay": 0.01, "max_grad_norm": 1.0},
            "output": str(out / "lmtune-run"),
        }
    )
    return {
        "train_samples_per_s": metrics["train_samples_per_s"],
        "train_seconds": metrics["train_seconds"],
        "dev_accuracy": metrics["validation"]["accuracy"],
        "steps": metrics["step"],
    }


def run_trainer(args: argparse.Namespace, out: Path, grouped: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from lmtune.models import resolve_model

    torch.set_num_threads(args.threads)
    source = resolve_model("bundled:minilm")
    tokenizer = AutoTokenizer.from_pretrained(source)

    def load(name: str, limit: int | None) -> Dataset:
        lines = (SST2 / name).read_text(encoding="utf-8").splitlines()[1:]
        rows = [line.split("\t") for line in lines][:limit]
        data = Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})
        return data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=args.max_length),
                        batched=True, remove_columns=["sentence"])

    train, dev = load("train.tsv", args.rows), load("dev.tsv", None)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    steps = -(-len(train) // args.batch_size) * args.epochs
    training_args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        warmup_steps=int(args.warmup * steps), weight_decay=0.01, max_grad_norm=1.0,
        bf16=args.precision == "bf16", use_cpu=True, seed=args.seed, eval_strategy="no", save_strategy="no",
        report_to="none", logging_steps=50, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy)
    result = trainer.train()
    evaluation = trainer.evaluate()
    return {
        "train_samples_per_s": round(len(train) * args.epochs / result.metrics["train_runtime"], 2),
        "train_seconds": result.metrics["train_runtime"],
        "dev_accuracy": evaluation["eval_accuracy"],
    }


def _accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=float, default=0.06)
    parser.add_argument("--max-length", type=int, default=66)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-grouping", action="store_true", help="lmtune without length-grouped batches")
    parser.add_argument("--attention", choices=["eager", "sdpa"], default="sdpa", help="lmtune's kernel")
    parser.add_argument("--dense-embeddings", action="store_true", help="lmtune with dense embedding updates")
    parser.add_argument("--torch-dropout", action="store_true", help="lmtune with torch's dropout masks")
    parser.add_argument("--autocast-weights", action="store_true",
                        help="lmtune casting fp32 weights under autocast instead of training on bf16 copies")
    parser.add_argument("--batch-tokens", type=int, help="lmtune with batches sized by this token budget")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(lambda tmp: SIDES[args.child](args, tmp))
        return
    raw = sys.argv[1:]
    argv = [a for i, a in enumerate(raw) if not a.startswith("--sides") and (i == 0 or raw[i - 1] != "--sides")]
    results = {name: run_side(__file__, name, argv) for name in args.sides.split(",")}
    _print(args, results)


SIDES = {
    "trainer": lambda args, out: run_trainer(args, out, grouped=False),
    "grouped": lambda args, out: run_trainer(args, out, grouped=True),
    "lmtune": run_lmtune,
}


def _print(args: argparse.Namespace, results: dict) -> None:
    out = sys.stdout
    out.write(f"SST-2: {args.rows} training rows x {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, "
              f"{args.precision}, {args.threads} threads; dev = 872 sentences\n")
    if args.batch_tokens:
        steps = results.get("lmtune", {}).get("steps")
        out.write(f"lmtune's batches hold up to {args.batch_tokens} padded tokens ({steps} steps)\n")
    out.write(f"{'':>8} {'train samples/s':>16} {'train s':>9} {'wall s':>8} {'peak RSS MiB':>13} {'dev acc':>8}\n")
    for name, r in results.items():
        out.write(f"{name:>8} {r['train_samples_per_s']:>16.1f} {r['train_seconds']:>9.1f} {r['wall_seconds']:>8.1f} "
                  f"{r['peak_rss_mib']:>13.1f} {100 * r['dev_accuracy']:>7.2f}%\n")
    m = results.get("lmtune")
    for name in ("trainer", "grouped"):
        if m is None or name not in results:
            continue
        t = results[name]
        out.write(f"lmtune vs {name}: train samples/s {m['train_samples_per_s'] / t['train_samples_per_s']:.2f}x, "
                  f"whole-process wall {t['wall_seconds'] / m['wall_seconds']:.2f}x, "
                  f"dev accuracy {100 * (m['dev_accuracy'] - t['dev_accuracy']):+.2f} points\n")


if __name__ == "__main__":
    main()
