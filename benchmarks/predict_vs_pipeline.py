"""`lmtune predict` vs `transformers.pipeline` on the same sentences with the same fine-tuned model.

A classification run is trained first (bundled MiniLM, 2,000 SST-2 rows, 1 epoch; or `--run DIR`).
Then each side labels the same sentences (SST-2 training sentences that the run did not train on)
in its own fresh process, timed whole (imports, model load, tokenization, inference, writing):

    lmtune:   `lmtune predict RUN --input sentences.txt --output predictions.jsonl` (its defaults)
    pipeline: `pipeline("text-classification", model=RUN/model, batch_size=32)` over the sentences,
              written as JSON lines

Prints both wall times, their ratio and how many labels agree.

    python benchmarks/predict_vs_pipeline.py                 # 5,000 sentences
    python benchmarks/predict_vs_pipeline.py --sentences 20000 --run runs/sst2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
TRAIN_ROWS = 2000

PIPELINE = """
import json, sys, torch
from transformers import pipeline
torch.set_num_threads({threads})
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
classify = pipeline("text-classification", model=sys.argv[2], batch_size={batch_size}, device="cpu")
with open(sys.argv[3], "w", encoding="utf-8") as out:
    for text, row in zip(texts, classify(texts, truncation=True)):
        out.write(json.dumps({{"text": text, "label": row["label"], "score": row["score"]}}) + "\\n")
"""


def _train(out: Path) -> Path:
    import lmtune

    run = out / "sst2-run"
    lmtune.train({
        "model": "bundled:minilm",
        "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "text": "sentence",
                 "max_train_samples": TRAIN_ROWS},
        "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "eval_train_samples": 0},
        "output": str(run),
    })
    return run


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _labels(path: Path, names: dict[str, str]) -> list[str]:
    return [names.get(str(row["label"]), str(row["label"])) for row in map(json.loads, path.read_text().splitlines())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=5000)
    parser.add_argument("--run", type=Path, help="an lmtune classification run (default: train one)")
    parser.add_argument("--batch-size", type=int, default=32, help="the pipeline's batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run = args.run or _train(out)
        lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1 + TRAIN_ROWS:]
        sentences = out / "sentences.txt"
        sentences.write_text("".join(line.split("\t")[0] + "\n" for line in lines[: args.sentences]))
        ours, theirs = out / "lmtune.jsonl", out / "pipeline.jsonl"
        script = out / "pipeline.py"
        script.write_text(PIPELINE.format(threads=args.threads, batch_size=args.batch_size))
        lmtune_s = _timed([sys.executable, "-m", "lmtune", "predict", str(run), "--input", str(sentences),
                           "--output", str(ours)], env)
        pipeline_s = _timed([sys.executable, str(script), str(sentences), str(run / "model"), str(theirs)], env)
        config = json.loads((run / "model" / "config.json").read_text())
        # the pipeline names labels by config.id2label; lmtune by the run's label names: compare both as names
        names = {str(i): name for i, name in config.get("id2label", {}).items()}
        mine, pipes = _labels(ours, names), _labels(theirs, {})
    agree = sum(a == b for a, b in zip(mine, pipes, strict=True))
    print(f"{args.sentences} SST-2 sentences, {args.threads} threads, whole process each")
    print(f"lmtune predict: {lmtune_s:.1f} s; transformers.pipeline (batch {args.batch_size}): {pipeline_s:.1f} s; "
          f"ratio {pipeline_s / lmtune_s:.2f}x; labels agree on {agree}/{len(mine)}")


if __name__ == "__main__":
    main()
