"""Where one causal-LM pretraining step goes: the Trainer's way vs lmtune's, side by side in one process.

The model is the `pretrain_vs_trainer.py` one (``scratch:tiny``: 4 layers, width 128, 8K vocabulary, tied
embeddings), one batch of 16 blocks × 256 tokens. Variants, timed round-robin after warm-up:

    trainer   fp32 weights under bf16 autocast, the model's own loss (``labels=``: fp32 logits, PyTorch's
              cross-entropy), dense AdamW, clipping: what the Hugging Face Trainer runs
    lmtune    bf16 weight copies with fp32 masters, lmtune's chunked cross-entropy on bf16 logits, the same
              AdamW and clipping: what `lmtune train` runs

Then the torch profiler's top operations of one lmtune step.

    python benchmarks/profile_lm_step.py [--steps 5 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _base(work: str, threads: int) -> Path:
    from pretrain_vs_trainer import prepare_base

    defaults = argparse.Namespace(steps=300, batch_size=16, block=256, lr=1e-3, warmup=0.05, precision="bf16",
                                  threads=threads, seed=42, work=work)
    return prepare_base(defaults)


def _stepper(base: Path, variant: str, ids: torch.Tensor, stack: ExitStack):
    from lmtune.tasks.language_model import CausalLM, load_causal_lm
    from lmtune.training.bf16_weights import Bf16Weights
    from lmtune.training.dropout import fast_dropout
    from lmtune.training.lazy_rows import clip_grad_norm
    from lmtune.training.optim import build_optimizer

    torch.manual_seed(0)
    model = load_causal_lm(str(base), attn_implementation="sdpa")
    model.train()
    optimizer = build_optimizer(model, 1e-3, 0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    task = CausalLM()
    copies = None
    if variant == "lmtune":
        stack.enter_context(fast_dropout(model))
        copies = Bf16Weights(model, None)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if copies is None:
                loss = model(**batch).loss
            else:
                loss = task.loss(copies(input_ids=ids, attention_mask=batch["attention_mask"]), batch)
        loss.backward()
        if copies is not None:
            copies.gradients_to_masters()
        clip_grad_norm(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if copies is not None:
            copies.refresh()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--work", default="/tmp/lmtune-pretrain-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = _base(args.work, args.threads)
    ids = torch.randint(0, 8192, (16, 256), generator=torch.Generator().manual_seed(0))
    best: dict[str, float] = {}
    with ExitStack() as stack:
        steps = {name: _stepper(base, name, ids, stack) for name in ("trainer", "lmtune")}
        for step in steps.values():
            for _ in range(3):  # warm-up: allocator, first-call costs
                step()
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / args.steps * 1000)
        print(f"one step, 16 x 256 tokens, {args.threads} threads, fastest of {args.rounds} rounds:")
        for name, ms in best.items():
            print(f"  {name:>8}: {ms:7.1f} ms")
        print(f"  trainer / lmtune: {best['trainer'] / best['lmtune']:.2f}x")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                steps["lmtune"]()
    print(f"lmtune step, top operations by own time (ms per step, {args.steps} steps):")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    for event in events[:12]:
        print(f"  {event.key[:60]:<60} {event.self_cpu_time_total / 1000 / args.steps:7.1f}"
              f"  {100 * event.self_cpu_time_total / total:5.1f}%")
    print(f"  {'all operations':<60} {total / 1000 / args.steps:7.1f}")


if __name__ == "__main__":
    main()
