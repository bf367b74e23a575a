"""GGUF export of Llama-family decoders: the real stories260K (imported from llama2.c, sentencepiece-style BPE with
byte fallback) and a scratch decoder (byte-level BPE), read back independently and compared with the run's model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import TINYSTORIES, shared

pytestmark = pytest.mark.integration


def _story_texts(count: int) -> list[str]:
    shared(TINYSTORIES)
    with TINYSTORIES.open(encoding="utf-8") as f:
        lines = [line.strip() for _, line in zip(range(400), f, strict=False) if len(line.strip()) > 80]
    return lines[-count:]


def _read_back(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    return tokenizer, AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()


def test_stories260k_exports_to_gguf_with_the_same_tokens_and_logits(stories260k, tmp_path, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "stories"
    shutil.copytree(stories260k, run)
    result = cli("export", run, "--format", "gguf")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{run / 'gguf' / 'model.gguf'}: f32; read back by transformers: the same token "
                                    "ids on 3 texts, largest |logit difference| ")
    assert result.stderr == ""  # no library chatter, no progress bars
    checks = json.loads((run / "gguf" / "gguf.json").read_text())
    assert checks["max_abs_diff"] <= 1e-4 and checks["top1_agreement"] == 1.0

    # independently of the exporter's own check: other texts, the original model as the transformers run holds it
    tokenizer, back = _read_back(run / "gguf")
    original_tokenizer = AutoTokenizer.from_pretrained(run / "model")
    original = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32).eval()
    for text in _story_texts(4):
        ids = original_tokenizer(text)["input_ids"][:120]
        assert tokenizer(text)["input_ids"][:120] == ids
        with torch.no_grad():
            expected = original(input_ids=torch.tensor([ids])).logits
            got = back(input_ids=torch.tensor([ids])).logits
        assert float((expected - got).abs().max()) <= 1e-4

    # q8_0 weights: smaller, a measured (not bounded) difference, the same next tokens almost everywhere
    q8 = cli("export", run, "--format", "gguf", "--quantize", "q8_0", "--out", tmp_path / "q8")
    assert q8.returncode == 0, q8.stderr
    q8_checks = json.loads((tmp_path / "q8" / "gguf.json").read_text())
    assert q8_checks["tolerance"] is None and 0 < q8_checks["max_abs_diff"] < 2.0
    assert q8_checks["top1_agreement"] >= 0.9
    assert (tmp_path / "q8" / "model.gguf").stat().st_size < 0.5 * (run / "gguf" / "model.gguf").stat().st_size


def test_a_scratch_decoder_exports_with_its_byte_level_tokenizer(tmp_path, cli):
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n".join(_story_texts(60)) + "\n")
    run = tmp_path / "scratch"
    trained = cli("train", "examples/tinystories.yaml", f"data.train={corpus}", "model=scratch:tiny",
                  "lm.vocab_size=400", "train.max_steps=3", "train.eval_every=3", "train.max_length=64",
                  "train.batch_size=4", f"output={run}")
    assert trained.returncode == 0, trained.stderr
    result = cli("export", run, "--format", "gguf")
    assert result.returncode == 0, result.stderr
    checks = json.loads((run / "gguf" / "gguf.json").read_text())
    assert checks["max_abs_diff"] <= 1e-4 and checks["texts"] >= 1 and checks["checked_on"].endswith(".txt")

    from gguf import GGUFReader

    field = GGUFReader(run / "gguf" / "model.gguf").fields["tokenizer.ggml.model"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"  # described as byte-level BPE
    tokenizer, back = _read_back(run / "gguf")
    _same_logits_as_lmtune(run, tokenizer, back, "Once upon a time there was a dog named Max.")


def test_a_lora_run_exports_with_its_adapters_merged(stories260k, stories_slice, tmp_path, cli):
    run = tmp_path / "lora"
    trained = cli("train", "examples/tinystories.yaml", f"data.train={stories_slice['train']}", f"model={stories260k}",
                  "strategy.name=lora", "train.max_steps=3", "train.eval_every=3", "train.max_length=64",
                  "train.batch_size=4", "train.lr=5e-3", f"output={run}")
    assert trained.returncode == 0, trained.stderr
    assert (run / "model" / "adapter_config.json").is_file()
    import lmtune

    checks = lmtune.export(run, format="gguf")  # the Python API
    assert checks["out"] == str(run / "gguf" / "model.gguf") and checks["max_abs_diff"] <= 1e-4
    tokenizer, back = _read_back(run / "gguf")
    _same_logits_as_lmtune(run, tokenizer, back, "Lily saw a big red ball in the park.")


def _same_logits_as_lmtune(run, tokenizer, back, text: str) -> None:
    """The file's model against the run as lmtune loads it (adapters applied), in fp32, on ``text``."""
    import lmtune

    loaded = lmtune.load(run)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == loaded.tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        expected = loaded.model.float()(input_ids=ids).logits
        got = back(input_ids=ids).logits
    assert float((expected - got).abs().max()) <= 1e-4


def test_gguf_refusals_are_one_line_and_write_nothing(trained_run, stories260k, tmp_path, cli, monkeypatch):
    result = cli("export", trained_run[0], "--format", "gguf", "--out", tmp_path / "cls")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "--format gguf takes Llama-architecture causal LMs" in result.stderr and "BertForSequenceClassification" \
        in result.stderr
    assert not (tmp_path / "cls").exists()
    assert cli("export", stories260k, "--format", "gguf", "--quantize", "int8").stderr.strip().endswith(
        "lmtune: error: quantize 'int8': not with format gguf (it takes: onnx int8; gguf f16 or q8_0)")

    # a writer that got the rotary layout wrong: the read-back check catches it, and nothing is kept
    from lmtune import gguf_export

    monkeypatch.setattr(gguf_export, "_pairwise_rotation", lambda weight, heads: weight)
    with pytest.raises(gguf_export.LmtuneError, match="logits .* away from the run's"):
        gguf_export.export_gguf(stories260k, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists() and not list(tmp_path.glob(".wrong*"))
