"""lmtune vs the Hugging Face Trainer on extractive QA (SQuAD, split by article), side by side.

Both sides train the bundled MiniLM with a span head on the same features (the same tokenizer
call: windows of ``--max-length`` tokens overlapping by ``--stride``, answers mapped to token
positions), with the same epochs, batch size, learning rate, warmup, weight decay, clipping,
precision, seed and threads, and are scored by the same post-processing (n-best start/end pairs
across windows) and the official SQuAD EM/F1. Each side runs in its own process. The split is
scripts/squad_split.py's: 36 articles for training, 12 for evaluation.

    python benchmarks/qa_vs_trainer.py [--train-questions 2000 --eval-questions 500]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sides import run_child, run_side

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def _split(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    from squad_split import split, write

    train, evaluation = split()
    return (write(train[: args.train_questions], out / "train.jsonl"),
            write(evaluation[: args.eval_questions], out / "eval.jsonl"))


def run_lmtune(args: argparse.Namespace, out: Path) -> dict:
    import lmtune

    train, evaluation = _split(args, out)
    metrics = lmtune.train({
        "task": "qa", "model": "bundled:minilm",
        "data": {"train": str(train), "validation": str(evaluation), "doc_stride": args.stride},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                  "precision": args.precision, "seed": args.seed, "max_length": args.max_length,
                  "threads": args.threads, "eval_every": 0, "eval_train_samples": 0},
        "regularization": {"weight_decay": 0.01, "max_grad_norm": 1.0},
        "output": str(out / "lmtune-run"),
    }, show_diagnosis=False)
    return {"train_features_per_s": metrics["train_samples_per_s"], "train_seconds": metrics["train_seconds"],
            "exact_match": metrics["validation"]["exact_match"], "f1": metrics["validation"]["f1"],
            "features": metrics["train_rows"]}


def run_trainer(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, Trainer, TrainingArguments

    from lmtune.data import read_table
    from lmtune.loader import load_config
    from lmtune.models import load_tokenizer, resolve_model
    from lmtune.tasks.qa import QuestionAnswering

    torch.set_num_threads(args.threads)
    train_file, eval_file = _split(args, out)
    cfg = load_config({"task": "qa", "data": {"train": str(train_file), "doc_stride": args.stride}})
    task = QuestionAnswering({"doc_stride": args.stride})
    source = resolve_model("bundled:minilm")
    tokenizer = load_tokenizer(source)
    columns = ("input_ids", "token_type_ids", "start_positions", "end_positions")

    def features(path: Path) -> list[dict]:
        return task.encode(read_table(str(path)), tokenizer, cfg.data, args.max_length)

    train, evaluation = features(train_file), features(eval_file)
    train_set = Dataset.from_dict({k: [f[k] for f in train] for k in columns})
    eval_set = Dataset.from_dict({k: [f[k] for f in evaluation] for k in columns[:2]})
    torch.manual_seed(args.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(source)
    steps = -(-len(train_set) // args.batch_size) * args.epochs
    training_args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        warmup_steps=int(args.warmup * steps), weight_decay=0.01, max_grad_norm=1.0,
        bf16=args.precision == "bf16", use_cpu=True, seed=args.seed, eval_strategy="no", save_strategy="no",
        report_to="none", logging_steps=50, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    start, end = trainer.predict(eval_set).predictions
    scores = [torch.stack([torch.tensor(start[i, : len(f["input_ids"])]), torch.tensor(end[i, : len(f["input_ids"])])],
                          -1) for i, f in enumerate(evaluation)]
    metrics = task.aggregate(scores, evaluation)  # the same post-processing and scores as lmtune's
    return {"train_features_per_s": round(len(train_set) * args.epochs / result.metrics["train_runtime"], 2),
            "train_seconds": result.metrics["train_runtime"], "exact_match": metrics["exact_match"],
            "f1": metrics["f1"], "features": len(train_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-questions", type=int, default=2000)
    parser.add_argument("--eval-questions", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", choices=["lmtune", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(lambda tmp: (run_lmtune if args.child == "lmtune" else run_trainer)(args, tmp))
        return
    results = {name: run_side(__file__, name, sys.argv[1:]) for name in ("trainer", "lmtune")}
    out = sys.stdout
    out.write(f"SQuAD v1.1 by article: {args.train_questions} training questions x {args.epochs} epoch(s), "
              f"{args.eval_questions} evaluation questions; max length {args.max_length}, stride {args.stride}, "
              f"batch {args.batch_size}, lr {args.lr}, {args.precision}, {args.threads} threads\n")
    out.write(f"{'':>8} {'features':>9} {'features/s':>11} {'train s':>8} {'wall s':>7} {'RSS MiB':>8} "
              f"{'EM':>7} {'F1':>7}\n")
    for name, r in results.items():
        out.write(f"{name:>8} {r['features']:>9} {r['train_features_per_s']:>11.1f} {r['train_seconds']:>8.1f} "
                  f"{r['wall_seconds']:>7.1f} {r['peak_rss_mib']:>8.1f} {r['exact_match']:>7.2f} {r['f1']:>7.2f}\n")
    t, m = results["trainer"], results["lmtune"]
    out.write(f"throughput ratio lmtune/Trainer: {m['train_features_per_s'] / t['train_features_per_s']:.2f}x; "
              f"EM difference {m['exact_match'] - t['exact_match']:+.2f}, F1 difference {m['f1'] - t['f1']:+.2f} "
              "points\n")


if __name__ == "__main__":
    main()
