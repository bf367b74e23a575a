"""`lmtune predict` on PyTorch vs onnxruntime (fp32) vs onnxruntime int8, on the same sentences and run.

A classification run is trained first (bundled MiniLM, 2,000 SST-2 rows, 1 epoch; or `--run DIR`) and exported
(`lmtune export RUN --format onnx --quantize int8`, which checks the graph against PyTorch). Each backend then
labels the same SST-2 training sentences the run did not train on, in its own fresh process; the child times
loading and the prediction itself, the parent the whole process (imports included). Accuracy is against the
sentences' gold labels. "torch-fp32" is the same run scored in fp32 (a copy with train.precision fp32): what torch
does on a CPU without bf16 units, where the issue's target applies.

    python benchmarks/onnx_vs_torch.py                     # 5,000 sentences
    python benchmarks/onnx_vs_torch.py --run runs/sst2 --sentences 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
TRAIN_ROWS = 2000

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import lmtune
from lmtune.cli.main import quiet_libraries
from lmtune.data import read_table
quiet_libraries()
run = lmtune.load(sys.argv[1], backend=sys.argv[2].removesuffix("-fp32"))
t1 = time.perf_counter()
table = read_table(sys.argv[3], "test")
predictions = run.predict(table)
t2 = time.perf_counter()
with open(sys.argv[4], "w") as out:
    for p in predictions:
        out.write(json.dumps(p) + "\\n")
print("RESULT " + json.dumps({"import_load_s": t1 - t0, "predict_s": t2 - t1, "batch": run.config.train.eval_batch}))
"""


def _rows() -> list[dict]:
    with (SST2 / "train.tsv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _prepare(args: argparse.Namespace, work: Path) -> tuple[Path, list[dict]]:
    rows = _rows()
    run = Path(args.run) if args.run else work / "run"
    if not (run / "metrics.json").exists():
        (work / "train.tsv").write_text("sentence\tlabel\n" + "".join(
            f"{r['sentence']}\t{r['label']}\n" for r in rows[:TRAIN_ROWS]))
        subprocess.run(["lmtune", "train", str(REPO / "examples" / "sst2.yaml"), f"data.train={work / 'train.tsv'}",
                        "train.epochs=1", f"output={run}"], check=True, capture_output=True)
    if not (run / "onnx" / "model.int8.onnx").exists():
        done = subprocess.run(["lmtune", "export", str(run), "--format", "onnx", "--quantize", "int8"], check=True,
                              capture_output=True, text=True)
        sys.stdout.write(done.stdout)
    held_out = [r for r in rows[TRAIN_ROWS:] if len(r["sentence"].split()) >= 4][: args.sentences]
    return run, held_out


def _side(run: Path, backend: str, data: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run), backend, str(data), str(out)], capture_output=True,
                          text=True, env=env)
    wall = time.perf_counter() - started
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{backend} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a classification run (default: train one on 2,000 SST-2 rows)")
    parser.add_argument("--sentences", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", default="/tmp/lmtune-onnx-bench")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run, rows = _prepare(args, work)
    data = work / "sentences.jsonl"
    data.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in rows))
    results = {}
    fp32 = _fp32_copy(run)  # torch as it runs on a CPU without bf16
    for backend in ("torch", "torch-fp32", "onnx", "onnx-int8"):
        out = work / f"{backend}.jsonl"
        results[backend] = _side(fp32 if backend == "torch-fp32" else run, backend, data, out, args.threads)
        predicted = [json.loads(x)["label"] for x in out.read_text().splitlines()]
        right = sum(str(p) == r["label"] for p, r in zip(predicted, rows, strict=True))
        results[backend]["accuracy"] = right / len(rows)
        results[backend]["labels"] = predicted
    batches = math.ceil(len(rows) / results["torch"]["batch"])
    sys.stdout.write(f"lmtune predict on {len(rows)} held-out SST-2 sentences ({run}), {args.threads} threads, "
                     f"{batches} batches of up to {results['torch']['batch']}\n")
    sys.stdout.write(f"{'backend':<10} {'wall s':>7} {'predict s':>10} {'ms/batch':>9} {'accuracy':>9} "
                     f"{'same labels as torch':>21}\n")
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["labels"], results["torch"]["labels"], strict=True)) / len(rows)
        sys.stdout.write(f"{name:<10} {r['wall_s']:>7.1f} {r['predict_s']:>10.2f} "
                         f"{1000 * r['predict_s'] / batches:>9.1f} {100 * r['accuracy']:>8.2f}% {100 * same:>20.2f}%\n")
    for base in ("torch", "torch-fp32"):
        t = results[base]
        for name in ("onnx", "onnx-int8"):
            r = results[name]
            sys.stdout.write(f"speed {name} / {base} (its time over {name}'s): per batch "
                             f"{t['predict_s'] / r['predict_s']:.2f}x, whole process {t['wall_s'] / r['wall_s']:.2f}x; "
                             f"accuracy {100 * (r['accuracy'] - t['accuracy']):+.2f} points\n")


def _fp32_copy(run: Path) -> Path:
    """The run with train.precision fp32: torch scores it as it would on a CPU without bf16 units."""
    import shutil

    import yaml

    copy = run.with_name(run.name + "-fp32")
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "onnx"), dirs_exist_ok=True)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["train"]["precision"] = "fp32"
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


if __name__ == "__main__":
    main()
