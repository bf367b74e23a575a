"""The language-model tasks end to end through the CLI, on real data: pretraining from scratch, the
imported stories260K, instruction tuning, masked-LM domain adaptation, generation and their errors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from tests.conftest import REPO, TINYSTORIES, CliResult, kill_at_checkpoint, lmtune_command, rendered_dom, run_cli


def run(*args: str) -> CliResult:
    """`lmtune ARGS...` in process (these tests are about what the commands do, not about their process)."""
    return run_cli(*args)


def write_config(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_stories260k_import_generates_the_reference_story_and_reproduces_its_loss(stories260k):
    # llama2.c's doc/stories260K.md greedy sample from BOS
    result = run("generate", str(stories260k), "--prompt", "", "--max-new-tokens", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time, there was a little girl named Lily. She loved to play "
                                    "outside in the park. One day, she saw a big, red ball.")
    # the reference figure: about 1.35 nats/token over the file's first 5 stories
    result = run("eval", str(stories260k), "--data", str(TINYSTORIES), "--max-samples", "5", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert abs(metrics["loss"] - 1.35) / 1.35 < 0.05, metrics
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-3)


def test_generation_settings_sample_reproducibly_and_reject_nonsense(stories260k):
    args = ["generate", str(stories260k), "--prompt", "Tom had a dog", "--max-new-tokens", "20",
            "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "3"]
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    bad = run("generate", str(stories260k), "--prompt", "x", "--top-k", "5")
    assert bad.returncode == 2 and "set a temperature > 0" in bad.stderr


def test_pretrain_from_scratch_evaluates_generates_and_resumes(stories_slice, tmp_path):
    config = write_config(tmp_path / "pretrain.yaml", f"""
task: causal_lm
model: scratch:tiny
data:
  train: {stories_slice['train']}
  validation: {stories_slice['validation']}
lm:
  vocab_size: 600
train:
  max_steps: 24
  batch_size: 8
  max_length: 64
  eval_every: 8
  eval_train_samples: 16
""")
    out = tmp_path / "run"
    command = lmtune_command("train", str(config), f"output={out}")
    kill_at_checkpoint(command, out, 8)
    tokenizer = hashlib.sha1((out / "base" / "tokenizer.json").read_bytes()).hexdigest()
    result = run("train", str(config), f"output={out}")  # resumed in this process
    assert result.returncode == 0, result.stderr
    assert "resumed from step-8" in result.stderr
    assert hashlib.sha1((out / "base" / "tokenizer.json").read_bytes()).hexdigest() == tokenizer
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["step"] == 24 and final["train_tokens_per_s"] > 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("split") == "validation"]
    assert losses[-1] < losses[0] < math.log(600) + 0.5  # it learned from ~uniform over the vocabulary

    from transformers import AutoModelForCausalLM  # the result loads with plain transformers

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.model_type == "llama"
    result = run("eval", str(out), "--data", str(stories_slice["validation"]), "--json")
    metrics = json.loads(result.stdout)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-3)
    result = run("generate", str(out), "--prompt", "Once upon a time", "--max-new-tokens", "8")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    assert (out / "diagnosis.json").is_file()
    assert run("report", str(out)).returncode == 0
    dom = rendered_dom(out / "report.html", tmp_path)
    assert "Perplexity" in dom  # the second curve: a language model's perplexity


@pytest.mark.parametrize("strategy", ["lora", "freeze"])
def test_instruction_tuning_then_predict(stories260k, instructions, tmp_path, strategy):
    config = write_config(tmp_path / "sft.yaml", f"""
task: sft
model: {stories260k}
data:
  train: {instructions}
strategy:
  name: {strategy}
train:
  max_steps: 6
  batch_size: 8
  max_length: 128
  eval_train_samples: 8
""")
    out = tmp_path / "run"
    result = run("train", str(config), f"output={out}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["validation_loss"] > 0
    assert json.loads((out / "task.json").read_text())["chat_template"]  # saved: prompts render the same later
    inputs = tmp_path / "ask.jsonl"
    inputs.write_text(json.dumps({"instruction": "Is this movie review positive or negative?",
                                  "input": "a gorgeous , witty film"}) + "\n", encoding="utf-8")
    result = run("predict", str(out), "--input", str(inputs))
    assert result.returncode == 0, result.stderr
    assert "generated" in json.loads(result.stdout)
    import lmtune  # the Python API answers the same instruction the same way (greedy)

    answer = lmtune.generate(out, {"instruction": "Is this movie review positive or negative?",
                                   "input": "a gorgeous , witty film"}, max_new_tokens=128)
    assert answer == json.loads(result.stdout)["generated"]


def test_masked_lm_adaptation_then_classification(sst2_slice, tmp_path):
    mlm = write_config(tmp_path / "mlm.yaml", f"""
task: masked_lm
model: bundled:minilm
data:
  train: {sst2_slice['train']}
  text: sentence
train:
  max_steps: 4
  batch_size: 16
  max_length: 48
  eval_train_samples: 8
lm:
  whole_word_mask: true
  pseudo_perplexity_samples: 4
""")
    adapted = tmp_path / "mlm"
    result = run("train", str(mlm), f"output={adapted}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["validation_pseudo_perplexity"] > 1 and 0 <= metrics["validation_accuracy"] <= 100
    # a learning rate too small to move anything: the classifier's encoder must be the adapted one
    result = run("train", str(REPO / "examples" / "sst2.yaml"), f"model={adapted}",
                 f"data.train={sst2_slice['train']}", f"data.validation={sst2_slice['dev']}",
                 f"output={tmp_path / 'cls'}", "train.max_steps=1", "train.eval_train_samples=0", "train.lr=1e-12")
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    from lmtune.models import resolve_model

    def encoder(path):
        weights = load_file(str(path))
        return {k.removeprefix("bert."): v for k, v in weights.items() if ".layer." in k}

    bundled = encoder(next(Path(resolve_model("bundled:minilm")).glob("*.safetensors")))
    mlm_encoder, cls_encoder = encoder(adapted / "model" / "model.safetensors"), encoder(
        tmp_path / "cls" / "model" / "model.safetensors")
    assert set(bundled) == set(mlm_encoder) == set(cls_encoder)
    assert max((mlm_encoder[k] - bundled[k]).abs().max().item() for k in bundled) > 1e-4  # adaptation moved it
    assert max((cls_encoder[k] - mlm_encoder[k]).abs().max().item() for k in bundled) < 1e-6  # and it was loaded


@pytest.mark.parametrize("args, message", [
    (["model=scratch:tiny"], "is for task causal_lm"),
    (["task=causal_lm", "model=scratch:huge"], "unknown scratch size 'huge'"),
])
def test_scratch_config_errors(sst2_slice, tmp_path, args, message):
    result = run("train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
                 f"output={tmp_path / 'run'}", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_import_and_generate_errors(tmp_path, trained_run):
    result = run("import", "llama2c", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode == 2 and "missing: not found" in result.stderr
    assert not (tmp_path / "out").exists()
    run_dir, _ = trained_run
    result = run("generate", str(run_dir), "--prompt", "hello")
    assert result.returncode == 2 and "does not generate text" in result.stderr


def test_continued_pretraining_starts_from_the_imported_weights(stories260k, stories_slice, tmp_path):
    config = write_config(tmp_path / "continue.yaml", f"""
task: causal_lm
model: {stories260k}
data:
  train: {stories_slice['train']}
  validation: {stories_slice['validation']}
train:
  max_steps: 3
  batch_size: 8
  max_length: 256
  lr: 1e-4
  eval_train_samples: 8
""")
    result = run("train", str(config), f"output={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    loss = json.loads(result.stdout.strip().splitlines()[-1])["validation_loss"]
    assert loss < 2.0 < math.log(512)  # pretrained (about 1.3-1.6 on these stories), not a fresh model (6.2)


def test_explain_a_causal_lm_next_token(stories260k, tmp_path):
    out = tmp_path / "explain"
    text = "Once upon a time, there was a little girl named Lily. She loved to play with her"
    result = run("explain", str(stories260k), "--text", text, "--out", str(out), "--steps", "32")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.splitlines()[0])
    assert line["target"].startswith("next token") and 0 < line["probability"] <= 1
    [scores] = json.loads((out / "explain.json").read_text())
    assert len(scores["attention"]) == 5 and len(scores["attention"][0]) == 8  # stories260K: 5 layers, 8 heads
    assert "Lily." in scores["words"]
    assert abs(scores["attributions"]["ig"]["convergence_delta"]) < 0.05
    assert "base_model" not in scores or not scores["base_model"]  # an imported checkpoint has no base to load
    dom = rendered_dom(out / "explain.html", tmp_path)
    assert 'data-ready="1"' in dom
    chosen = run("explain", str(stories260k), "--text", text, "--target", "\u2581the", "--no-checks", "--no-png",
                 "--out", str(tmp_path / "toys"))
    assert chosen.returncode == 0 and json.loads(chosen.stdout.splitlines()[0])["target"] == "next token '\u2581the'"
    bad = run("explain", str(stories260k), "--text", text, "--target", "no such token", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "not a token of this model's vocabulary" in bad.stderr
