"""lmtune vs TRL's DPOTrainer on DPO, side by side: pairs/s, peak RSS, final loss and validation reward accuracy.

Both sides tune the same decoder (``scratch:mini``'s Llama architecture with a byte-level BPE tokenizer trained by
lmtune on the pairs' text, seeded weights saved once) on the same real HH-RLHF pairs from the shared data (text
form: prompt up to the last Assistant turn, and the two replies; only pairs that fit in ``--max-length`` tokens,
so neither side truncates), with the same beta, learning rate, schedule, batch, steps, clipping, precision, seed
and threads. Each side runs in its own process; TRL with its defaults (reference log-probabilities computed at
each step, a copy of the model as the reference under full tuning, the adapters switched off under LoRA).

Both final models are scored afterwards by the same evaluation (lmtune's, on held-out pairs, against the same
starting model), so the validation numbers compare. lmtune's pairs/s counts its one pass of reference scoring
(``reference_seconds``: every training and validation pair) as training time; the run is one epoch over the
training pairs, so that pass is not spread over several.

    python benchmarks/dpo_vs_trl.py [--strategies full,lora --seeds 1,2 --steps 40 --batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sides import run_child, run_side

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO.parent / "shared" / "data" / "preference" / "hh_harmless_base_test.jsonl"


def prepare(args: argparse.Namespace) -> Path:
    """The shared base model and the train/validation pair files (text form), made once in ``--work``."""
    import torch

    from lmtune import scratch
    from lmtune.data import Table
    from lmtune.models import load_tokenizer
    from lmtune.tasks.language_model import load_causal_lm
    from lmtune.tasks.preference_rows import read_pairs

    work = Path(args.work)
    base = work / "base"
    made = work / "train.jsonl"
    if made.exists() and len(made.read_text().splitlines()) == args.train_pairs:
        return work
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    pairs, _ = read_pairs(Table(str(PAIRS), ["chosen", "rejected"], rows), "skip")
    texts = [p.prompt + p.chosen for p in pairs] + [p.rejected for p in pairs]
    scratch.prepare_base("scratch:mini", texts, 8192, args.max_length, base)
    torch.manual_seed(0)
    load_causal_lm(str(base)).save_pretrained(base)
    tokenizer = load_tokenizer(str(base))
    fit = [p for p in pairs if 1 + len(tokenizer(p.prompt)["input_ids"]) + max(
        len(tokenizer(p.chosen)["input_ids"]), len(tokenizer(p.rejected)["input_ids"])) < args.max_length]
    for name, part in (("train", fit[:args.train_pairs]), ("validation", fit[-args.validation_pairs:])):
        (work / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in part))
    return work


def _config(args: argparse.Namespace, out: Path) -> dict:
    work = Path(args.work)
    strategy = {"name": args.child_strategy, **({"r": 16, "alpha": 32, "dropout": 0.0}
                                                 if args.child_strategy == "lora" else {})}
    return {
        "task": "preference", "model": str(work / "base"), "strategy": strategy,
        "data": {"train": str(work / "train.jsonl"), "validation": str(work / "validation.jsonl")},
        "preference": {"loss": "dpo", "beta": args.beta},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": 0.0,
                  "precision": args.precision, "seed": args.child_seed, "max_length": args.max_length,
                  "threads": args.threads, "eval_every": 0, "eval_train_samples": 0, "log_every": 5,
                  "group_by_length": False},
        "regularization": {"weight_decay": 0.0, "max_grad_norm": 1.0},
        "output": str(out),
    }


def _validation(model, args: argparse.Namespace) -> dict:
    """lmtune's preference metrics of ``model`` on the held-out pairs, against the shared starting model."""
    import torch

    import lmtune
    from lmtune.evaluation import evaluate_examples
    from lmtune.evaluation.reference import attach_reference
    from lmtune.models import load_tokenizer
    from lmtune.pipeline import make_task
    from lmtune.tasks.language_model import load_causal_lm

    cfg = lmtune.load_config(_config(args, Path(args.work) / "unused"))
    task = make_task(cfg)
    tokenizer = load_tokenizer(str(Path(args.work) / "base"))
    table = task.read(cfg.data.validation, "validation")
    task.learn_from_rows(table, cfg.data)
    examples = task.encode(table, tokenizer, cfg.data, args.max_length)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else None
    attach_reference(load_causal_lm(str(Path(args.work) / "base")).eval(), {"v": examples}, task, 16,
                     tokenizer.pad_token_id, autocast=autocast)
    return evaluate_examples(model.eval(), examples, task, 16, tokenizer.pad_token_id, autocast=autocast)


def run_lmtune(args: argparse.Namespace, out: Path) -> dict:
    import lmtune

    metrics = lmtune.train(_config(args, out / "run"), show_diagnosis=False)
    seconds = metrics["train_seconds"] + metrics["reference_seconds"]
    train = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in train if x.get("split") == "train"]
    return {"pairs_per_s": round(args.steps * args.batch_size / seconds, 2), "train_seconds": round(seconds, 1),
            "final_train_loss": losses[-1], "validation": metrics["validation"]}


def run_sft(args: argparse.Namespace, out: Path) -> dict:
    """The memory yardstick: lmtune SFT of the same model and strategy, on each pair's prompt and replies as
    instruction rows, with as many sequences per step as DPO has (two per pair)."""
    import lmtune

    work = Path(args.work)
    data = out / "sft.jsonl"
    with data.open("w") as handle:
        for line in (work / "train.jsonl").read_text().splitlines():
            pair = json.loads(line)
            for reply in (pair["chosen"], pair["rejected"]):
                handle.write(json.dumps({"instruction": pair["prompt"], "output": reply}) + "\n")
    config = _config(args, out / "sft")
    config.pop("preference")
    config["task"] = "sft"
    config["data"] = {"train": str(data), "validation_split": 0.1}
    config["train"] = {**config["train"], "batch_size": 2 * args.batch_size}
    metrics = lmtune.train(config, show_diagnosis=False)
    return {"sequences_per_s": round(args.steps * 2 * args.batch_size / metrics["train_seconds"], 2)}


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from lmtune.models import load_tokenizer

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = load_tokenizer(str(work / "base"))
    torch.manual_seed(args.child_seed)
    model = AutoModelForCausalLM.from_pretrained(str(work / "base"), attn_implementation="sdpa")
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM") if args.child_strategy == "lora" else None
    config = DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        max_steps=args.steps, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear",
        beta=args.beta, max_length=args.max_length, bf16=args.precision == "bf16", use_cpu=True,
        seed=args.child_seed, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=5,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft)
    result = trainer.train()
    losses = [x.get("loss", x.get("train_loss")) for x in trainer.state.log_history
              if "loss" in x or "train_loss" in x]
    final = trainer.model.merge_and_unload() if peft is not None else trainer.model
    return {"pairs_per_s": round(args.steps * args.batch_size / result.metrics["train_runtime"], 2),
            "train_seconds": round(result.metrics["train_runtime"], 1), "final_train_loss": losses[-1],
            "validation": _validation(final, args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="full,lora")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--train-pairs", type=int, default=None, help="default: steps x batch (one epoch)")
    parser.add_argument("--validation-pairs", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", default="/tmp/lmtune-dpo-bench")
    parser.add_argument("--child", choices=["lmtune", "trl", "sft"], help=argparse.SUPPRESS)
    parser.add_argument("--child-strategy", help=argparse.SUPPRESS)
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.train_pairs = args.train_pairs or args.steps * args.batch_size
    if args.child:
        run_child(lambda tmp: {"lmtune": run_lmtune, "trl": run_trl, "sft": run_sft}[args.child](args, tmp))
        return
    from lmtune.cli.main import quiet_libraries

    quiet_libraries()
    prepare(args)
    out = sys.stdout
    out.write(f"DPO on {args.train_pairs} HH-RLHF pairs (scratch:mini decoder, 8K BPE): {args.steps} steps x "
              f"{args.batch_size} pairs, <= {args.max_length} tokens, beta {args.beta}, lr {args.lr}, "
              f"{args.precision}, {args.threads} threads\n")
    out.write(f"{'strategy':<8} {'seed':>4} {'side':>6} {'pairs/s':>8} {'wall s':>7} {'RSS MiB':>8} "
              f"{'train loss':>10} {'val loss':>9} {'val acc':>8} {'val margin':>10}\n")
    for strategy in args.strategies.split(","):
        for seed in args.seeds.split(","):
            sides = {}
            for name in ("trl", "lmtune"):
                sides[name] = run_side(__file__, name, [*sys.argv[1:], "--child-strategy", strategy,
                                                        "--child-seed", seed])
                r, v = sides[name], sides[name]["validation"]
                out.write(f"{strategy:<8} {seed:>4} {name:>6} {r['pairs_per_s']:>8.2f} {r['wall_seconds']:>7.1f} "
                          f"{r['peak_rss_mib']:>8.0f} {r['final_train_loss']:>10.4f} {v['loss']:>9.4f} "
                          f"{v['reward_accuracy']:>8.3f} {v['reward_margin']:>10.3f}\n")
                out.flush()
            t, m = sides["trl"], sides["lmtune"]
            sft = run_side(__file__, "sft", [*sys.argv[1:], "--child-strategy", strategy, "--child-seed", seed])
            out.write(f"  -> lmtune/TRL: pairs/s {m['pairs_per_s'] / t['pairs_per_s']:.2f}x, peak RSS "
                      f"{m['peak_rss_mib'] / t['peak_rss_mib']:.2f}x; lmtune DPO/SFT peak RSS "
                      f"{m['peak_rss_mib'] / sft['peak_rss_mib']:.2f}x (SFT: {2 * args.batch_size} sequences "
                      f"per step, {sft['peak_rss_mib']:.0f} MiB)\n")


if __name__ == "__main__":
    main()
