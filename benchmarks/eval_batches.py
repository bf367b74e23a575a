"""Scoring time with fixed-size vs token-sized evaluation batches, side by side in one process.

Loads a classification run and labels the same SST-2 sentences with `LoadedRun.predict` under each batching:
``rows-N`` cuts the length-sorted sentences into batches of N rows (lmtune before token sizing);
``tokens-N`` into batches of at most N padded tokens; ``default`` is lmtune's own (`eval_batches`:
up to the evaluation batch size × the longest sentence's tokens). Round-robin, fastest of each shown.

    python benchmarks/eval_batches.py RUN [--sentences 5000 --rounds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2_TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"


def _by_rows(rows: int):
    def cut(lengths: list[int], batch_size: int) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        return [order[i:i + rows] for i in range(0, len(order), rows)]
    return cut


def _by_tokens(budget: int):
    from lmtune.data.batching import token_batches

    def cut(lengths: list[int], batch_size: int) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        return token_batches(order, lengths, budget)
    return cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an lmtune classification run")
    parser.add_argument("--sentences", type=int, default=5000, help="the last N SST-2 training sentences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="rows-64,default,tokens-2048,tokens-8192,rows-256")
    args = parser.parse_args()

    import lmtune
    import lmtune.evaluation.evaluate as evaluate

    run = lmtune.load(args.run)
    lines = SST2_TRAIN.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t")[0] for line in lines[-args.sentences:]]
    variants = {"default": evaluate.eval_batches}
    for name in args.variants.split(","):
        kind, _, size = name.partition("-")
        if kind in ("rows", "tokens"):
            variants[name] = (_by_rows if kind == "rows" else _by_tokens)(int(size))
    run.predict(texts[:200])  # warm-up: bf16 copies, allocator
    best: dict[str, float] = {}
    labels: dict[str, list] = {}
    for _ in range(args.rounds):
        for name in args.variants.split(","):
            evaluate.eval_batches = variants[name]
            start = time.perf_counter()
            labels[name] = [p["label"] for p in run.predict(texts)]
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    reference = labels[next(iter(labels))]
    print(f"{len(texts)} sentences, fastest of {args.rounds} rounds")
    for name, seconds in best.items():
        same = sum(a == b for a, b in zip(labels[name], reference, strict=True))
        print(f"{name:>12}: {seconds:6.3f} s  ({best[next(iter(best))] / seconds:.2f}x the first; "
              f"labels equal to the first's on {same}/{len(texts)})")


if __name__ == "__main__":
    main()
