"""lmtune vs the Hugging Face Trainer on causal-LM pretraining from scratch, side by side.

Both sides train the same new decoder (``scratch:tiny``: Llama architecture, config and byte-level BPE
tokenizer prepared once by lmtune from the training text) on the same packed blocks of the TinyStories
file, with the same steps, batch, block size, learning rate, warmup, weight decay, clipping, precision,
seed and threads. Each side runs in its own process. Afterwards both models are scored by the same
evaluation (per-document loss on held-out stories), so the loss compares equal numbers of tokens.

    python benchmarks/pretrain_vs_trainer.py [--steps 300 --batch-size 16 --block 256]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sides import run_child, run_side

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus" / "tinystories_train_first2MiB.txt"


def _config(args: argparse.Namespace, base: Path, out: Path) -> dict:
    return {
        "task": "causal_lm", "model": str(base),
        "data": {"train": str(CORPUS), "validation_split": 0.05},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                  "precision": args.precision, "seed": args.seed, "max_length": args.block,
                  "threads": args.threads, "eval_every": 0, "eval_train_samples": 0, "log_every": 50},
        "regularization": {"weight_decay": 0.1, "max_grad_norm": 1.0},
        "lm": {"packing": False},  # the Trainer's blocks are the classic stream: the same work on both sides
        "output": str(out),
    }


def prepare_base(args: argparse.Namespace) -> Path:
    """The shared starting point: config, tokenizer (trained on the training documents) and seeded weights."""
    from lmtune import scratch
    from lmtune.data.splits import load_tables
    from lmtune.loader import load_config
    from lmtune.pipeline import make_task

    base = Path(args.work) / "base"
    if not base.is_dir():
        cfg = load_config(_config(args, base, Path(args.work) / "unused"))
        train = load_tables(cfg.data, make_task(cfg))["train"]
        scratch.prepare_base("scratch:tiny", train.texts("text"), 8192, args.block, base)
        _save_initial_weights(base, args.seed)
    return base


def _save_initial_weights(base: Path, seed: int) -> None:
    """Both sides start from these exact weights (a `model:` directory must hold weights)."""
    import torch

    from lmtune.tasks.language_model import load_causal_lm

    torch.manual_seed(seed)
    load_causal_lm(str(base)).save_pretrained(base)


def _blocks(args: argparse.Namespace, base: Path):
    """(training blocks, validation documents, task, tokenizer) exactly as lmtune makes them."""
    from lmtune.data.splits import load_tables
    from lmtune.loader import load_config
    from lmtune.models import load_tokenizer
    from lmtune.pipeline import make_task

    cfg = load_config(_config(args, base, Path(args.work) / "unused"))
    task = make_task(cfg)
    tables = load_tables(cfg.data, task)
    tokenizer = load_tokenizer(str(base))
    train = task.training_examples(task.encode(tables["train"], tokenizer, cfg.data, args.block), args.block)
    validation = task.encode(tables["validation"], tokenizer, cfg.data, args.block)
    return train, validation, task, tokenizer


def run_lmtune(args: argparse.Namespace, out: Path) -> dict:
    import lmtune

    base = Path(args.work) / "base"
    metrics = lmtune.train(_config(args, base, out / "run"), show_diagnosis=False)
    return {"tokens_per_s": metrics["train_tokens_per_s"], "train_seconds": metrics["train_seconds"],
            "validation_loss": metrics["validation"]["loss"], "perplexity": metrics["validation"]["perplexity"]}


def run_trainer(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from lmtune.evaluation import evaluate_examples
    from lmtune.tasks.language_model import load_causal_lm

    torch.set_num_threads(args.threads)
    base = Path(args.work) / "base"
    train, validation, task, tokenizer = _blocks(args, base)
    full = [b for b in train if len(b["input_ids"]) == args.block]  # the Trainer's collator cannot pad labels
    dataset = Dataset.from_dict({"input_ids": [b["input_ids"] for b in full], "labels": [b["labels"] for b in full]})
    torch.manual_seed(args.seed)
    model = load_causal_lm(str(base), attn_implementation="sdpa")
    training_args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        max_steps=args.steps, warmup_steps=int(args.warmup * args.steps), weight_decay=0.1, max_grad_norm=1.0,
        lr_scheduler_type="linear", bf16=args.precision == "bf16", use_cpu=True, seed=args.seed,
        eval_strategy="no", save_strategy="no", report_to="none", logging_steps=50, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=default_data_collator)
    result = trainer.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else None
    # the evaluation lmtune runs on its own validation blocks
    metrics = evaluate_examples(model, validation, task, 2 * args.batch_size, tokenizer.pad_token_id,
                                autocast=autocast)
    tokens = args.steps * args.batch_size * args.block
    return {"tokens_per_s": round(tokens / result.metrics["train_runtime"], 1),
            "train_seconds": result.metrics["train_runtime"], "validation_loss": metrics["loss"],
            "perplexity": metrics["perplexity"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", default="/tmp/lmtune-pretrain-bench", help="where the shared tokenizer goes")
    parser.add_argument("--child", choices=["lmtune", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(lambda tmp: (run_lmtune if args.child == "lmtune" else run_trainer)(args, tmp))
        return
    prepare_base(args)
    results = {name: run_side(__file__, name, sys.argv[1:]) for name in ("trainer", "lmtune")}
    out = sys.stdout
    out.write(f"causal-LM pretraining from scratch (scratch:tiny, 8K BPE) on TinyStories: {args.steps} steps x "
              f"{args.batch_size} blocks x {args.block} tokens, lr {args.lr}, {args.precision}, "
              f"{args.threads} threads\n")
    out.write(f"{'':>8} {'tokens/s':>9} {'train s':>8} {'wall s':>7} {'RSS MiB':>8} {'val loss':>9} {'ppl':>8}\n")
    for name, r in results.items():
        out.write(f"{name:>8} {r['tokens_per_s']:>9.0f} {r['train_seconds']:>8.1f} {r['wall_seconds']:>7.1f} "
                  f"{r['peak_rss_mib']:>8.1f} {r['validation_loss']:>9.4f} {r['perplexity']:>8.2f}\n")
    t, m = results["trainer"], results["lmtune"]
    out.write(f"throughput ratio lmtune/Trainer: {m['tokens_per_s'] / t['tokens_per_s']:.2f}x; validation loss "
              f"difference {m['validation_loss'] - t['validation_loss']:+.4f} nats/token after the same tokens\n")


if __name__ == "__main__":
    main()
