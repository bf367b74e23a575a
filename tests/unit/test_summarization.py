"""Summarization: ROUGE by hand, encoder-decoder and causal-LM features, and both trained end to end (tiny models)."""

from __future__ import annotations

import json

import pytest

import lmtune
from lmtune.data import Table, collate
from lmtune.data.splits import load_tables
from lmtune.loader import load_config
from lmtune.models import load_tokenizer, resolve_model
from lmtune.tasks.summarization import IGNORE_INDEX, Summarization, rouge
from tests.conftest import make_tiny_bert

ROWS = [{"document": f"#Person1#: shall we meet at {h} ? #Person2#: yes , at {h} near the station .",
         "summary": f"They will meet at {h} near the station ."} for h in ("noon", "six", "ten", "two") * 4]


def test_rouge_by_hand():
    assert rouge(["the cat sat on the mat"], [["the cat sat on the mat"]]) == {
        "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    # unigram overlap 2 of 3 each way -> R1 F 66.67; bigram "the cat" 1 of 2 -> 50; LCS 2 -> 66.67
    assert rouge(["the cat ran"], [["the cat sat"]]) == {"rouge1": 66.6667, "rouge2": 50.0, "rougeL": 66.6667}
    # the best reference counts
    assert rouge(["a dog"], [["the cat sat", "a dog"]])["rouge1"] == 100.0


def _table(rows):
    return Table("d.jsonl", ["document", "summary"], rows)


def test_encoder_decoder_and_causal_features():
    tokenizer = load_tokenizer(resolve_model("bundled:minilm"))
    data = load_config({"task": "summarization", "data": {"train": "d.jsonl"}}).data
    task = Summarization({"kind": "encoder-decoder"})
    [ex] = task.encode(_table(ROWS[:1]), tokenizer, data, 64)
    assert ex["labels"][-1] == tokenizer.sep_token_id and ex["decoder_input_ids"][0] == tokenizer.cls_token_id
    assert ex["decoder_input_ids"][1:] == ex["labels"][:-1] and ex["references"] == [ROWS[0]["summary"]]
    short = task.encode(_table([{"document": "hi", "summary": "a greeting ."}]), tokenizer, data, 64)[0]
    batch = collate([ex, short], tokenizer.pad_token_id)
    assert batch["labels"].shape == batch["decoder_input_ids"].shape == batch["decoder_attention_mask"].shape
    n = len(short["labels"])
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all() and (batch["decoder_input_ids"][1, n:] == 0).all()
    assert batch["decoder_attention_mask"][1].sum() == n
    causal = Summarization({"kind": "causal"})
    [ex] = causal.encode(_table(ROWS[:1]), tokenizer, data, 64)
    prompt = ex["prompt_length"]
    assert len(ex["labels"]) == len(ex["input_ids"]) and set(ex["labels"][:prompt]) == {IGNORE_INDEX}
    assert ex["labels"][prompt:] == ex["input_ids"][prompt:] and ex["input_ids"][-1] == tokenizer.sep_token_id
    decoded = tokenizer.decode(ex["input_ids"][prompt:-1])
    assert decoded.replace(" ", "") == ROWS[0]["summary"].lower().replace(" ", "")


@pytest.fixture
def dialogs(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _tiny_gpt2(out):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_tokenizer(resolve_model("bundled:minilm"))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["encoder-decoder", "causal"])
def test_both_architectures_train_evaluate_and_summarize(kind, dialogs, tmp_path):
    model = make_tiny_bert(tmp_path / "bert", layers=1) if kind == "encoder-decoder" else _tiny_gpt2(tmp_path / "g")
    out = tmp_path / "run"
    metrics = lmtune.train({"task": "summarization", "model": str(model), "data": {"train": str(dialogs)},
                            "summarization": {"architecture": kind, "eval_generate": 2, "num_beams": 2,
                                              "max_target_length": 12, "min_length": 1},
                            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "precision": "fp32",
                                      "max_length": 48},
                            "output": str(out)})
    assert {"loss", "rouge1", "rouge2", "rougeL"} <= set(metrics["validation"])
    run = lmtune.load(out)
    [summary] = run.predict(["#Person1#: see you at noon ? #Person2#: yes ."])
    assert summary["summary"].strip()  # beam search with min_length 1 writes at least one token
    assert run.predict(["#Person1#: see you at noon ? #Person2#: yes ."]) == [summary]  # deterministic
    scores = run.evaluate(str(dialogs), max_samples=3)
    assert scores["generated"] == 3 and 0 <= scores["rougeL"] <= 100


@pytest.mark.parametrize("strategy", ["lora", "freeze"])
def test_strategies_reload_to_the_same_model(strategy, dialogs, tmp_path):
    out = tmp_path / strategy
    metrics = lmtune.train({"task": "summarization", "model": str(make_tiny_bert(tmp_path / "bert", layers=2)),
                            "data": {"train": str(dialogs)}, "strategy": {"name": strategy},
                            "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32", "max_length": 32},
                            "early_stopping": {"restore_best": False}, "output": str(out)})
    assert metrics["trainable_parameters"] < metrics["parameters"]
    run = lmtune.load(out)
    held_out = load_tables(run.config.data, run.task)["validation"]
    assert run.evaluate(held_out)["loss"] == pytest.approx(metrics["validation"]["loss"], abs=1e-4)
