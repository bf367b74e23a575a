"""SFT with LoRA on the decoder families people use, each a tiny random model built from its transformers config:
every one trains, reloads and generates, with LoRA on its own attention projections."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DECODER_FAMILIES, make_tiny_decoder

pytestmark = pytest.mark.integration

TARGETS = {"gpt2": {"c_attn"}, "gpt_neox": {"query_key_value"}, "phi3": {"qkv_proj"}}
"""LoRA's modules by family (fused query-key-value projections); the others adapt q_proj and v_proj."""


@pytest.fixture(scope="module")
def chats(instructions):
    return [json.loads(line) for line in instructions.read_text().splitlines()]


@pytest.mark.parametrize("family", list(DECODER_FAMILIES))
def test_sft_with_lora_trains_reloads_and_generates(family, chats, instructions, tmp_path, cli):
    texts = [r.get("input") or r["messages"][-2]["content"] for r in chats[:60]]
    model = make_tiny_decoder(family, tmp_path / "base", texts)
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\nstrategy: {name: lora, r: 8}\n")
    run = tmp_path / "run"
    result = cli("train", config, f"model={model}", f"data.train={instructions}", "data.max_train_samples=32",
                 "train.max_steps=8", "train.batch_size=8", "train.lr=1e-2", "train.max_length=96",
                 "train.eval_train_samples=0", "train.log_every=2", f"output={run}")
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("split") == "train"]
    assert losses[-1] < losses[0], losses  # it learns: LoRA sits on trainable projections of this family
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    targets = set(adapter["target_modules"])
    assert targets == TARGETS.get(family, {"q_proj", "v_proj"}), targets  # the family's attention projections
    if family == "gemma2":  # it has no SDPA kernel: eager attention, said in one line
        assert "has no SDPA attention kernel; using eager attention" in result.stderr

    import lmtune

    reply = lmtune.load(run).generate({"instruction": "Is this movie review positive or negative?",
                                        "input": "a fine film"}, max_new_tokens=5)
    assert isinstance(reply, str)
    answer = cli("generate", run, "--prompt", "Is this review positive?", "--max-new-tokens", "4", "--no-stream")
    assert answer.returncode == 0, answer.stderr


def test_gradient_checkpointing_under_lora_gives_the_same_training(chats, instructions, tmp_path, cli):
    """Non-reentrant checkpointing trains a frozen base's adapters (the reentrant form gave them no gradient,
    transformers#26334): the same losses, step by step, as without it."""
    texts = [r.get("input") or r["messages"][-2]["content"] for r in chats[:60]]
    model = make_tiny_decoder("llama", tmp_path / "base", texts)
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\nstrategy: {name: lora, r: 8}\n")
    losses = {}
    for checkpointing in ("false", "true"):
        run = tmp_path / f"run-{checkpointing}"
        result = cli("train", config, f"model={model}", f"data.train={instructions}", "data.max_train_samples=32",
                     "train.max_steps=6", "train.batch_size=8", "train.lr=1e-2", "train.max_length=96",
                     "train.eval_train_samples=0", "train.log_every=1", "train.bf16_weights=false",
                     f"train.gradient_checkpointing={checkpointing}", f"output={run}")
        assert result.returncode == 0, result.stderr
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[checkpointing] = [r["loss"] for r in log if r.get("split") == "train"]
    assert len(losses["true"]) == 6 and losses["true"][-1] < losses["true"][0]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_rows_give_each_example_its_own_logits(family, chats, instructions, tmp_path):
    """lm.packing: several SFT examples in one row see only themselves, positions restarting: their logits
    equal the unpacked examples' within 1e-4, and the loss masks travel with them."""
    import torch

    from lmtune.data import read_table
    from lmtune.data.collate import IGNORE_INDEX, model_inputs
    from lmtune.loader import load_config
    from lmtune.pipeline import make_task
    from lmtune.tasks.language_model import load_causal_lm

    texts = [r.get("input") or r["messages"][-2]["content"] for r in chats[:60]]
    path = make_tiny_decoder(family, tmp_path / "base", texts)
    cfg = load_config({"task": "sft", "model": str(path), "data": {"train": str(instructions)},
                       "lm": {"packing": True}, "output": str(tmp_path / "x"), "train": {"max_length": 200}})
    task = make_task(cfg)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = task.encode(read_table(str(instructions), "train").head(6), tokenizer, cfg.data, 96)
    rows = task.training_examples(examples, 200)
    assert len(rows) < len(examples) and sum(len(r["input_ids"]) for r in rows) == sum(
        len(e["input_ids"]) for e in examples)
    model = load_causal_lm(path, attn_implementation="sdpa").eval()
    packed = task.collate(rows, tokenizer.pad_token_id)
    assert packed["attention_mask"].dim() == 4 and packed["position_ids"][0, 0] == 0
    with torch.no_grad():
        logits = model(**model_inputs(packed)).logits
        k = 0
        for r, row in enumerate(rows):
            start = 0
            for _ in sorted(set(row["segment_ids"])):
                example = examples[k]
                n = len(example["input_ids"])
                alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
                assert float((logits[r, start:start + n] - alone).abs().max()) <= 1e-4
                assert packed["labels"][r, start:start + n].tolist() == example["labels"]
                assert packed["labels"][r, start].item() == IGNORE_INDEX  # no loss across the boundary
                start, k = start + n, k + 1
    assert k == len(examples)


def test_sft_trains_packed(chats, instructions, tmp_path, cli):
    texts = [r.get("input") or r["messages"][-2]["content"] for r in chats[:60]]
    model = make_tiny_decoder("llama", tmp_path / "base", texts)
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\nstrategy: {name: lora, r: 8}\n")
    run = tmp_path / "run"
    result = cli("train", config, f"model={model}", f"data.train={instructions}", "train.max_steps=6",
                 "train.batch_size=4", "train.lr=1e-2", "train.max_length=256", "lm.packing=true",
                 "train.log_every=1", f"output={run}")
    assert result.returncode == 0, result.stderr
    final = json.loads((run / "metrics.json").read_text())
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert losses[-1] < losses[0] and final["validation"]["loss"] > 0


def test_qlora_trains_over_a_4bit_base_reloads_it_and_merges_with_the_rounding_stated(chats, instructions, tmp_path,
                                                                                      cli):
    """strategy.name=qlora: the base loads in NF4 through bitsandbytes' CPU library, LoRA adapters on every linear
    layer learn over it, and the saved run reloads the same 4-bit base (eval reproduces the logged validation loss).
    `export --merge` folds the adapter into the full-precision base and states how far that moved the outputs."""
    import shutil

    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM

    import lmtune

    texts = [r.get("input") or r["messages"][-2]["content"] for r in chats[:60]]
    model = make_tiny_decoder("llama", tmp_path / "base", texts)
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    lines = instructions.read_text().splitlines()
    train.write_text("\n".join(lines[:40]) + "\n")
    dev.write_text("\n".join(lines[100:116]) + "\n")
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\nstrategy: {name: qlora, r: 8}\n")
    run = tmp_path / "run"
    command = ("train", config, f"model={model}", f"data.train={train}", f"data.validation={dev}",
               "train.max_steps=8", "train.batch_size=8", "train.lr=1e-2", "train.max_length=96",
               "train.eval_train_samples=0", "train.log_every=2", "train.eval_every=4", f"output={run}")
    result = cli(*command)
    assert result.returncode == 0, result.stderr
    assert "gemm_4bit" not in result.stderr  # bitsandbytes' note about a Hub kernel it could not fetch is not shown
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("split") == "train"]
    assert losses[-1] < losses[0], losses
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    every_linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == every_linear
    assert json.loads((run / "model" / "quantization.json").read_text())["bnb_4bit_quant_type"] == "nf4"

    loaded = lmtune.load(run)
    four_bit = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # the base reloads quantized, as it trained
    final = json.loads((run / "metrics.json").read_text())
    assert loaded.evaluate(str(dev))["loss"] == pytest.approx(final["validation"]["loss"], abs=1e-5)

    # its checkpoints hold the adapters, not the 4-bit base; resumed from one, the run ends as it did
    step5 = run / "checkpoints" / "step-5"  # step 5 ends the epoch
    assert (step5 / "trained.safetensors").is_file() and not list(step5.glob("model*.safetensors"))
    shutil.rmtree(run / "model"), (run / "metrics.json").unlink(), shutil.rmtree(run / "checkpoints" / "step-8")
    resumed = cli(*command)
    assert resumed.returncode == 0 and "resumed from step-5 (epoch 1, batch 0)" in resumed.stderr, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["validation"] == final["validation"]

    exported = cli("export", run, "--merge")
    assert exported.returncode == 0, exported.stderr
    line = next(x for x in exported.stderr.splitlines() if "over a 4-bit base" in x)
    stated = float(line.split("up to ")[1].split()[0])
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    ids = loaded.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        gap = float((merged(**ids).logits - loaded.model(**ids).logits.float()).abs().max())
    assert 0 < gap and stated > 0  # rounding is real, and stated
    assert gap < 10 * stated  # same order as the figure stated on the validation rows
