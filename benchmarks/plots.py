"""The documentation's benchmark plots (docs/img/*.svg), drawn from the figures in docs/benchmarks.md.

The figures are copied here by hand from the side-by-side runs the page reports (each with its command);
rerun a benchmark, update its row here and in the page, then `python benchmarks/plots.py`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "lmtune"  # stable ids: the files change only when a figure does
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"

VS_TRAINER = {  # (lmtune / Trainer throughput, lmtune / Trainer peak RSS), same work, one run
    "SST-2 classification\n(vs grouped Trainer)": (1.33, 0.83),
    "SST-2 classification\n(vs default Trainer)": (2.37, 0.83),
    "SQuAD extractive QA": (2.06, 0.81),
    "TinyStories pretraining\n(step, round-robin)": (1.68, 0.83),
}
STRATEGIES = {  # SST-2, 3,000 rows, 2 epochs: dev accuracy run to completion, trainable parameters
    "freeze": (83.60, 5_472_002), "full": (82.34, 22_713_986), "lora": (78.90, 74_498),
    "bitfit": (78.44, 174_338), "head": (72.25, 148_610),
}


def vs_trainer() -> Path:
    names = list(VS_TRAINER)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [VS_TRAINER[n][0] for n in names], 0.4, label="throughput (higher is better)")
    ax.bar([x + 0.2 for x in xs], [VS_TRAINER[n][1] for n in names], 0.4, label="peak RSS (lower is better)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("lmtune / Hugging Face Trainer")
    ax.set_title("lmtune vs the Trainer on the same work (1.0 = equal)")
    ax.legend(fontsize=8)
    return _save(fig, "vs_trainer.svg")


def strategies() -> Path:
    names = list(STRATEGIES)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.scatter([STRATEGIES[n][1] for n in names], [STRATEGIES[n][0] for n in names])
    for name in names:
        ax.annotate(name, (STRATEGIES[name][1], STRATEGIES[name][0]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("Strategies on 3,000 SST-2 rows, 2 epochs")
    return _save(fig, "strategies.svg")


def _save(fig, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = OUT / name
    fig.savefig(path, metadata={"Date": None})  # no timestamp: the file changes only when a figure does
    plt.close(fig)
    return path


if __name__ == "__main__":
    for path in (vs_trainer(), strategies()):
        print(path)
