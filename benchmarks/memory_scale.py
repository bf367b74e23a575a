"""SFT of decoders with the architectures of Qwen2.5-0.5B and Llama-3.2-1B on this machine: lmtune (full, LoRA,
LoRA + gradient checkpointing, QLoRA) and TRL's SFTTrainer (its defaults, gradient checkpointing on, with LoRA; then
with packing, without checkpointing, QLoRA, full), side by side.

The models are built from the published configs (shapes, vocabulary, tied embeddings, RoPE) with seeded random
weights and saved once; the tokenizer is a byte-level BPE trained by lmtune on the rows' text (its ids are a
subset of the model's vocabulary, whose embedding keeps its full size). The rows are prompt/completion pairs cut
from TinyStories in the shared data, between ``--min-length`` and ``--length`` tokens (seeded), the loss on the
completion. Every side trains one epoch over the same rows (the same training tokens, whatever its batching:
packed rows make fewer steps), batch ``--batch-size``, same learning rate, schedule, precision and threads, each in
a process of its own. Figures: training tokens per second (the rows' tokens over the training time), peak RSS of
the whole process, lmtune's memory estimate against its own peak, and the validation loss of the final model on
held-out rows, computed for every side by the same evaluation (lmtune's).

    python benchmarks/memory_scale.py [--models qwen2.5-0.5b,llama-3.2-1b --rows 8 --length 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from sides import run_child, run_side

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus" / "tinystories_train_first2MiB.txt"
ARCHITECTURES = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                     "rms_norm_eps": 1e-5},
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6},
    "llama-3.2-1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rms_norm_eps": 1e-5,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
}
LMTUNE_SIDES = {"full": {"name": "full"}, "full+ckpt": {"name": "full"}, "lora": {"name": "lora"},
                "lora+ckpt": {"name": "lora"}, "qlora": {"name": "qlora"}}
TRL_SIDES = {"trl-lora": {}, "trl-lora-packing": {"packing": True},
             "trl-lora-no-ckpt": {"gradient_checkpointing": False}, "trl-qlora": {"quantized": True},
             "trl-full": {"full": True}}
"""TRL's SFTTrainer with its defaults (gradient checkpointing on: SFTConfig's default) and lmtune's LoRA settings;
the other sides change one thing: packing, no checkpointing, a 4-bit NF4 base with adapters on every linear layer
(lmtune's QLoRA), no adapters (full fine-tuning, checkpointing on)."""


def add_row_arguments(parser: argparse.ArgumentParser, rows: int, validation_rows: int, length: int, min_length: int,
                      batch_size: int, lr: float, work: str) -> None:
    """The rows `prepare` makes (how many, how long, where) and how they are trained, with these defaults."""
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--validation-rows", type=int, default=validation_rows)
    parser.add_argument("--length", type=int, default=length)
    parser.add_argument("--min-length", type=int, default=min_length)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--work", default=work)


def prepare(args: argparse.Namespace, architecture: str) -> Path:
    """The model directory (random weights, a BPE tokenizer) and the train/validation rows, made once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmtune.scratch import SPECIAL, train_tokenizer

    work = Path(args.work) / architecture
    if (work / "model" / "config.json").exists() and (work / "validation.jsonl").exists():
        return work
    work.mkdir(parents=True, exist_ok=True)
    stories = [s.strip() for s in CORPUS.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    tokenizer = train_tokenizer(stories[:2000], 8192)
    special = tokenizer.convert_tokens_to_ids(SPECIAL)
    shape = dict(ARCHITECTURES[architecture])
    # no pad_token_id in the model config, as in the published ones: an embedding's padding row starts at zero,
    # and with BOS = PAD every row would start from a zero vector, whose backward pass gives NaN at this depth
    config = AutoConfig.for_model(shape.pop("model_type"), bos_token_id=special, eos_token_id=special, **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    rows = _rows(stories, tokenizer, args)
    for name, part in (("train", rows[:args.rows]), ("validation", rows[args.rows:args.rows + args.validation_rows])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return work


def _rows(stories: list[str], tokenizer, args: argparse.Namespace) -> list[dict]:
    """Prompt/completion rows of ``--min-length`` to ``--length`` tokens (with the chat template's few tokens of
    room): consecutive stories joined, the first quarter as the prompt."""
    rng = random.Random(0)
    rows, story = [], 0
    while len(rows) < args.rows + args.validation_rows:
        target = rng.randint(args.min_length, args.length) - 32
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < target:
            words += stories[story].split()
            story += 1
        ids = tokenizer(" ".join(words))["input_ids"][:target]
        cut = len(ids) // 4
        rows.append({"prompt": tokenizer.decode(ids[:cut]), "completion": tokenizer.decode(ids[cut:])})
    return rows


def _tokens(work: Path) -> int:
    from lmtune.models import load_tokenizer

    tokenizer = load_tokenizer(str(work / "model"))
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    return sum(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in rows)


def run_lmtune(args: argparse.Namespace, out: Path) -> dict:
    import lmtune
    from lmtune.errors import LmtuneError

    work = Path(args.work) / args.child_model
    config = {
        "task": "sft", "model": str(work / "model"), "strategy": LMTUNE_SIDES[args.child],
        "data": {"train": str(work / "train.jsonl"), "validation": str(work / "validation.jsonl")},
        "train": {"epochs": 1, "batch_size": args.batch_size, "lr": args.lr, "warmup": 0.0, "max_length": args.length,
                  "precision": "bf16", "threads": args.threads, "eval_every": 0, "eval_train_samples": 0,
                  "gradient_checkpointing": args.child.endswith("+ckpt"), "log_every": 1},
        "lm": {"packing": args.packing}, "output": str(out / "run"),
    }
    try:
        metrics = lmtune.train(config, show_diagnosis=False)
    except LmtuneError as err:
        return {"refused": str(err)}
    return {"tokens_per_s": _tokens(work) / metrics["train_seconds"], "validation_loss": metrics["validation"]["loss"],
            "estimate_mib": metrics["memory_estimate_mib"], "steps": metrics["step"]}


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from lmtune.models import load_tokenizer

    torch.set_num_threads(args.threads)
    side = TRL_SIDES[args.child]
    work = Path(args.work) / args.child_model
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(str(work / "model"))
    quantized = {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16),
    } if side.get("quantized") else {}
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), attn_implementation="sdpa", **quantized)
    # lmtune's LoRA defaults (its QLoRA adapts every linear layer)
    peft = None if side.get("full") else LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM",
                                                    target_modules="all-linear" if quantized else None)
    config = SFTConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        num_train_epochs=1, warmup_steps=0, lr_scheduler_type="linear", max_length=args.length,
        packing=side.get("packing", False), gradient_checkpointing=side.get("gradient_checkpointing", True),
        bf16=True, use_cpu=True, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0, seed=42,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft)
    result = trainer.train()
    trained = trainer.model if peft is None else trainer.model.merge_and_unload()
    return {"tokens_per_s": _tokens(work) / result.metrics["train_runtime"],
            "validation_loss": _validation(trained, args, work), "steps": trainer.state.global_step}


def _validation(model, args: argparse.Namespace, work: Path) -> float:
    """lmtune's SFT validation loss of ``model`` on the held-out rows (what lmtune's own runs report)."""
    import torch

    import lmtune
    from lmtune.evaluation import evaluate_examples
    from lmtune.models import load_tokenizer
    from lmtune.pipeline import make_task

    cfg = lmtune.load_config({"task": "sft", "model": str(work / "model"),
                              "data": {"train": str(work / "train.jsonl")}, "output": str(work / "unused")})
    task = make_task(cfg)
    tokenizer = load_tokenizer(str(work / "model"))
    table = task.read(str(work / "validation.jsonl"), "validation")
    task.learn_from_rows(table, cfg.data)
    examples = task.encode(table, tokenizer, cfg.data, args.length)
    return evaluate_examples(model.eval(), examples, task, 2, tokenizer.pad_token_id,
                             autocast=torch.autocast("cpu", dtype=torch.bfloat16))["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen2.5-0.5b,llama-3.2-1b")
    parser.add_argument("--sides", default=",".join([*LMTUNE_SIDES, *TRL_SIDES]))
    add_row_arguments(parser, rows=8, validation_rows=4, length=1024, min_length=256, batch_size=2, lr=5e-4,
                      work="/tmp/lmtune-memory-scale")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                        help="lmtune's lm.packing (its default for sft: off)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_trl if args.child.startswith("trl") else run_lmtune
        run_child(lambda tmp: run(args, tmp))
        return
    from lmtune.cli.main import quiet_libraries

    quiet_libraries()
    out = sys.stdout
    for architecture in args.models.split(","):
        work = prepare(args, architecture)
        out.write(f"\n{architecture}: SFT, one epoch over {args.rows} rows ({_tokens(work)} tokens, "
                  f"{args.min_length}-{args.length} each), batch {args.batch_size}, bf16, {args.threads} threads\n")
        out.write(f"{'side':<18} {'tokens/s':>9} {'peak RSS MiB':>12} {'estimate':>9} {'est/peak':>8} "
                  f"{'val loss':>9} {'steps':>5}\n")
        ran, refused = set(), set()
        for side in args.sides.split(","):
            full = ran & {"full", "full+ckpt"}
            if side == "trl-full" and full and full <= refused:  # it would not fit either: it could take the machine
                out.write(f"{side:<18} not run: lmtune refused full fine-tuning as not fitting in memory\n")
                continue
            ran.add(side)
            r = run_side(__file__, side, [*sys.argv[1:], "--child-model", architecture])
            if "refused" in r:
                refused.add(side)
                out.write(f"{side:<18} refused: {r['refused']}\n")
                continue
            estimate = r.get("estimate_mib")
            ratio = f"{estimate / r['peak_rss_mib']:.2f}" if estimate else "-"
            out.write(f"{side:<18} {r['tokens_per_s']:>9.1f} {r['peak_rss_mib']:>12.0f} {estimate or '-':>9} "
                      f"{ratio:>8} {r['validation_loss']:>9.4f} {r['steps']:>5}\n")
            out.flush()


if __name__ == "__main__":
    main()
