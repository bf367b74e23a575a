"""Where one training step of the bundled MiniLM goes, variant by variant, side by side in one process.

A step is forward, backward and the AdamW update on one batch (default 32 x 16 tokens, SST-2's typical
length). Each variant is timed over the same batches after warm-up; printed: ms per forward, backward and
optimizer step, and the total, plus the bf16 matrix rate of this CPU (the floor the step could reach).

    python benchmarks/profile_step.py                      # 32 x 16 tokens, 2 threads
    python benchmarks/profile_step.py --tokens 40 --steps 30
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack, nullcontext

import torch
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()


def _model(bf16_weights: bool) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    from lmtune.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("bundled:minilm"), num_labels=2,
                                                               attn_implementation="sdpa")
    return model.to(torch.bfloat16) if bf16_weights else model


def time_variant(batches: list[dict], args: argparse.Namespace, *, autocast: bool = True,
                 bf16_weights: bool = False, sparse_embeddings: bool = False, fast: bool = False,
                 compiled: bool = False, copies: bool = False) -> dict:
    """ms per forward, backward and optimizer step (clipping to 1.0 included, as both trainers do)."""
    from lmtune.training.bf16_weights import Bf16Weights
    from lmtune.training.dropout import fast_dropout
    from lmtune.training.lazy_rows import clip_grad_norm, sparse_word_embeddings
    from lmtune.training.optim import build_optimizer

    model = _model(bf16_weights)
    model.train()
    forward_fn = torch.compile(model, dynamic=False) if compiled else model
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    with ExitStack() as speedups:
        lazy = speedups.enter_context(sparse_word_embeddings(model)) if sparse_embeddings else None
        optimizer = build_optimizer(model, 1e-5, 0.01, lazy_rows=lazy)
        weights = Bf16Weights(model, lazy) if copies else None  # what the training loop does
        if weights is not None:
            forward_fn = weights
        if fast:
            speedups.enter_context(fast_dropout(model))
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            with cast:
                loss = forward_fn(**batch).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if weights is not None:
                weights.gradients_to_masters()
            clip_grad_norm([p for p in model.parameters() if p.grad is not None], 1.0)
            optimizer.step()
            if weights is not None:
                weights.refresh()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            if i >= args.warmup:
                totals["forward"] += t1 - t0
                totals["backward"] += t2 - t1
                totals["optimizer"] += t3 - t2
    n = len(batches) - args.warmup
    row = {k: 1000 * v / n for k, v in totals.items()}
    row["step"] = sum(row.values())
    return row


def matmul_tflops(threads: int) -> float:
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ a
    return 2 * 2048**3 * reps / (time.perf_counter() - t0) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--variants", default="autocast,sparse-embeddings,fast-dropout,sparse+fast,bf16-copies,"
                                              "bf16-weights,compiled")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions; the fastest is shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30000, (args.batch_size, args.tokens), generator=generator),
                "attention_mask": torch.ones(args.batch_size, args.tokens, dtype=torch.long),
                "labels": torch.randint(0, 2, (args.batch_size,), generator=generator)}
               for _ in range(args.steps + args.warmup)]
    variants = {
        "fp32": dict(autocast=False),
        "autocast": dict(),  # what the Trainer's step does with bf16=True
        "sparse-embeddings": dict(sparse_embeddings=True),
        "fast-dropout": dict(fast=True),
        "sparse+fast": dict(sparse_embeddings=True, fast=True),
        "bf16-weights": dict(autocast=False, bf16_weights=True),  # no fp32 master weights: a reference only
        "compiled": dict(compiled=True),
        "bf16-copies": dict(copies=True, sparse_embeddings=True, fast=True),  # lmtune's defaults
    }
    print(f"MiniLM-L6 training step, batch {args.batch_size} x {args.tokens} tokens, {args.threads} threads; "
          f"bf16 matmul {matmul_tflops(args.threads):.2f} TFLOP/s")
    print(f"{'variant':>18} {'forward':>8} {'backward':>9} {'optimizer':>10} {'step ms':>8}")
    names = args.variants.split(",")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):  # side by side, repeatedly: the machine's noise hits every variant alike
        for name in names:
            row = time_variant(batches, args, **variants[name])
            if name not in best or row["step"] < best[name]["step"]:
                best[name] = row
    for name in names:
        row = best[name]
        print(f"{name:>18} {row['forward']:>8.1f} {row['backward']:>9.1f} {row['optimizer']:>10.1f} "
              f"{row['step']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
