"""Sentiment steering with preference tuning, end to end on SST-2 (issue: preference tuning, item 7).

1. pretrain a small decoder on SST-2 training sentences (lmtune's scratch decoder and tokenizer);
2. train two SST-2 classifiers: judge A makes the preference pairs, judge B (other rows, other seed) only
   measures, so the tuned model is never scored by the judge it was trained against;
3. `lmtune pairs`: the decoder continues 1,000 held-out review openings 6 times each; judge A's probability of
   "positive" for each continuation ranks them; the best and the worst make a pair;
4. DPO on those pairs, starting from the decoder (the reference is the decoder itself); steps 3-4 repeat from
   the tuned model (``--rounds``, on-policy: each round's pairs are sampled from the model being tuned);
5. fresh continuations of 150 other openings, before and after, judged by B; perplexity of SST-2 dev sentences
   before and after.

    python examples/steering/steer.py --out runs/steering        # about 20 minutes on 2 CPU cores

Each step is skipped when its output exists, so a second call only prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path

import lmtune
from lmtune.cli.main import quiet_libraries
from lmtune.generation import GenerationSettings
from lmtune.pairs import PairSettings

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"
PRETRAIN_ROWS = 60_000
"""Training sentences the decoder learns from; the rest of SST-2 train gives the held-out openings."""
OPENING_WORDS = 3
SAMPLE = GenerationSettings(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=0)


def _rows(name: str) -> list[dict]:
    with (SST2 / name).open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _write_data(out: Path, pair_prompts: int, fresh_prompts: int) -> dict[str, Path]:
    train, dev = _rows("train.tsv"), _rows("dev.tsv")
    paths = {k: out / "data" / f"{k}" for k in ("corpus.txt", "dev.txt", "openings.jsonl", "fresh.jsonl",
                                                 "judge_a.tsv", "judge_b.tsv")}
    paths["corpus.txt"].parent.mkdir(parents=True, exist_ok=True)
    # one sentence per document (blank lines between them): the decoder learns where a review ends
    paths["corpus.txt"].write_text("\n\n".join(r["sentence"] for r in train[:PRETRAIN_ROWS]) + "\n")
    paths["dev.txt"].write_text("\n\n".join(r["sentence"] for r in dev) + "\n")
    whole = [r["sentence"] for r in train[PRETRAIN_ROWS:] if len(r["sentence"].split()) >= 8]
    openings = [" ".join(s.split()[:OPENING_WORDS]) for s in whole]
    if pair_prompts + fresh_prompts > len(openings):
        raise SystemExit(f"only {len(openings)} held-out openings: lower --pair-prompts or --fresh-prompts")
    # the fresh openings are the last ones, whatever the number of pair prompts: one yardstick for every setting
    for name, part in (("openings.jsonl", openings[:pair_prompts]), ("fresh.jsonl", openings[-fresh_prompts:])):
        paths[name].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in part))
    for name, part in (("judge_a.tsv", train[:4000]), ("judge_b.tsv", train[20_000:24_000])):
        paths[name].write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in part))
    return paths


def _train(config: dict, out: Path) -> Path:
    if not (out / "metrics.json").exists():
        lmtune.train({**config, "output": str(out)}, show_diagnosis=False)
    return out


def _positive_rate(run: Path, prompts: Path, judge: Path, samples: int) -> float:
    """Share of fresh continuations judge B calls positive (the continuation alone: the opening is given)."""
    policy, judge_run = lmtune.load(run), lmtune.load(judge)
    texts = []
    for line in prompts.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        for k in range(samples):
            settings = GenerationSettings(**{**SAMPLE.__dict__, "seed": 1000 + k})
            texts.append(policy.generate(prompt, settings))
    labels = [p["label"] for p in judge_run.predict(texts)]
    return sum(str(label) == "1" for label in labels) / len(labels)


def _perplexity(run: Path, dev: Path) -> float:
    """Perplexity of SST-2 dev sentences under the run's model, as a language model (nats per token → e^)."""
    from lmtune.config import DataConfig
    from lmtune.data.corpus import read_corpus
    from lmtune.evaluation import evaluate_examples
    from lmtune.evaluation.reference import has_adapters
    from lmtune.tasks import TASKS

    loaded = lmtune.load(run)
    lm = TASKS.get("causal_lm")()
    examples = lm.encode(read_corpus(str(dev)), loaded.tokenizer, DataConfig(), 64)
    model = loaded.model.merge_and_unload() if has_adapters(loaded.model) else loaded.model
    loss = evaluate_examples(model, examples, lm, 64, loaded.tokenizer.pad_token_id)["loss"]
    return math.exp(loss)


def _dpo_round(start: Path, data: dict[str, Path], judge: Path, out: Path, name: str,
               args: argparse.Namespace) -> Path:
    """Pairs sampled from ``start`` and judged by ``judge`` (on the continuation alone), then DPO from ``start``."""
    pairs = out / "data" / f"pairs-{name}.jsonl"
    if not pairs.exists():
        counts = lmtune.make_pairs(start, data["openings.jsonl"], str(judge), pairs, label="1",
                            settings=PairSettings(samples=args.samples, generation=SAMPLE, min_gap=0.05),
                            judge_reply_only=True)
        print(json.dumps(counts), file=sys.stderr)
    return _train({"task": "preference", "model": str(start),
                   "data": {"train": str(pairs), "validation_split": 0.1},
                   "strategy": {"name": args.strategy}, "preference": {"loss": "dpo", "beta": args.beta},
                   "train": {"epochs": args.epochs, "batch_size": 16, "max_length": 64, "lr": args.lr, "warmup": 0.1},
                   "early_stopping": {"restore_best": args.keep == "best"}}, out / f"dpo-{name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/steering")
    parser.add_argument("--pair-prompts", type=int, default=1000)
    parser.add_argument("--fresh-prompts", type=int, default=150)
    parser.add_argument("--fresh-samples", type=int, default=2)
    parser.add_argument("--samples", type=int, default=6, help="continuations per opening for the pairs")
    parser.add_argument("--lr", type=float, default=1e-4, help="DPO learning rate")
    parser.add_argument("--epochs", type=float, default=2, help="DPO epochs over the pairs")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--strategy", default="full", help="DPO's strategy (full, lora, ...)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of sampling, judging and DPO (on-policy)")
    parser.add_argument("--keep", choices=["best", "last"], default="last",
                        help="DPO's final weights: the best validation reward accuracy's, or the last step's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="lmtune: %(message)s")
    quiet_libraries()  # as the command line does: no weight-loading reports
    out = Path(args.out)
    data = _write_data(out, args.pair_prompts, args.fresh_prompts)
    decoder = _train({"task": "causal_lm", "model": "scratch:tiny", "lm": {"vocab_size": 4096},
                      "data": {"train": str(data["corpus.txt"]), "validation": str(data["dev.txt"])},
                      "train": {"max_steps": 1500, "batch_size": 32, "max_length": 64, "lr": 2e-3, "warmup": 0.03,
                                "eval_every": 500}}, out / "decoder")
    judges = {}
    for name, seed in (("judge_a", 1), ("judge_b", 2)):
        judges[name] = _train({"task": "classification", "model": "bundled:minilm",
                               "data": {"train": str(data[f"{name}.tsv"]), "validation": str(SST2 / "dev.tsv"),
                                        "text": "sentence"},
                               "train": {"epochs": 2, "batch_size": 32, "lr": 5e-5, "max_length": 66, "seed": seed}},
                              out / name)
    tuned = decoder
    for round_ in range(1, args.rounds + 1):  # each round: fresh pairs from the current model, DPO from it
        name = f"p{args.pair_prompts}x{args.samples}-lr{args.lr:g}-e{args.epochs:g}-b{args.beta:g}-{args.keep}-" \
               f"{args.strategy}-r{round_}"
        tuned = _dpo_round(tuned, data, judges["judge_a"], out, name, args)
    rows = {}
    for name, run in (("decoder (before)", decoder), ("after DPO", tuned)):
        rows[name] = (_positive_rate(run, data["fresh.jsonl"], judges["judge_b"], args.fresh_samples),
                      _perplexity(run, data["dev.txt"]))
    accuracy = {n: json.loads((p / "metrics.json").read_text())["validation"]["accuracy"] for n, p in judges.items()}
    print(f"judges' SST-2 dev accuracy: A {accuracy['judge_a']:.3f}, B {accuracy['judge_b']:.3f}")
    print(f"{'model':<18} {'positive rate (judge B)':>24} {'dev perplexity':>15}")
    for name, (rate, ppl) in rows.items():
        print(f"{name:<18} {rate:>24.3f} {ppl:>15.2f}")
    (before_rate, before_ppl), (after_rate, after_ppl) = rows.values()
    print(f"change: {100 * (after_rate - before_rate):+.1f} points positive; perplexity x{after_ppl / before_ppl:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
