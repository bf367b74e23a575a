"""Every strategy × every task on tiny models: each pair trains something sensible (the new weights train, the
run reloads, LoRA merges to the same model) or is refused before anything is written, in one line that
says why and what to use instead."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lmtune.cli.main import main
from lmtune.strategies import STRATEGIES
from tests.conftest import (
    REPO,
    SHARED_DATA,
    make_tiny_bert,
    make_tiny_decoder,
    read_tsv,
    run_cli,
    untrained_run,
    write_tsv,
)

pytestmark = pytest.mark.integration

TASKS = ("classification", "qa", "summarization", "causal_lm", "masked_lm", "sft", "preference",
         "causal_lm/gpt2", "sft/gpt2", "preference/gpt2", "classification/llama", "summarization/llama",
         "summarization/gpt2")
"""Every task, and the decoder tasks again on a GPT-2-style model (biases, learned positions, Conv1D projections),
classification with a decoder's sequence-classification head, and summarization by each decoder (document and
prompt in, the summary carrying the loss)."""
REFUSED = {(task, strategy) for task in ("causal_lm", "sft", "preference", "summarization/llama")
           for strategy in ("head", "bitfit")} | {
    (f"{task}/gpt2", "head") for task in ("causal_lm", "sft", "preference", "summarization")}
"""Llama-style decoders: no bias terms, and the output head is the (tied) input embedding matrix; GPT-2 has
biases (BitFit trains) but ties its head too."""
NOT_QUANTIZED = {("summarization", "qlora")}
"""BERT2BERT is built from its encoder, not loaded whole, so transformers cannot load it in 4 bits."""
COMMON = ["train.max_steps=2", "train.batch_size=4", "train.eval_train_samples=4", "train.max_length=48",
          "data.max_eval_samples=6", "train.keep_checkpoints=1"]


@pytest.fixture(scope="module")
def setups(tmp_path_factory, sst2_slice, squad_slice, stories_slice, instructions):
    """(task → config overrides): tiny models and a few real rows for each task."""
    out = tmp_path_factory.mktemp("matrix")
    bert = make_tiny_bert(out / "bert")
    (out / "sft.jsonl").write_text("".join(instructions.read_text().splitlines(keepends=True)[:8]))
    rows = read_tsv(sst2_slice["train"])[:40]
    write_tsv(out / "cls.tsv", rows, ["sentence", "label"])
    (out / "text.txt").write_text("\n".join(r["sentence"] for r in rows[:16]) + "\n")
    dialogs = (SHARED_DATA / "summarization" / "dialogsum" / "train.jsonl").read_text().splitlines()[:12]
    (out / "sum.jsonl").write_text("\n".join(dialogs) + "\n")
    hh = (SHARED_DATA / "preference" / "hh_harmless_base_test.jsonl").read_text(encoding="utf-8").splitlines()
    (out / "pairs.jsonl").write_text("\n".join(sorted(hh[:100], key=len)[:16]) + "\n", encoding="utf-8")
    decoders = {family: make_tiny_decoder(family, out / family, [r["sentence"] for r in rows])
                for family in ("gpt2", "llama")}
    lm_run = out / "lm-base"
    result = run_cli("train", REPO / "examples" / "tinystories.yaml", f"data.train={stories_slice['train']}",
                     f"output={lm_run}", "model=scratch:tiny", "lm.vocab_size=400", "train.max_steps=2",
                     "train.max_length=48", "train.batch_size=4", "data.max_train_samples=20")
    assert result.returncode == 0, result.stderr
    decoder_data = {  # the decoder tasks, trained from a Llama-style base and again from a GPT-2-style one
        "causal_lm": [f"data.train={stories_slice['train']}", "data.max_train_samples=16"],
        "sft": [f"data.train={instructions}", "train.max_length=200", "data.max_train_samples=24"],
        "preference": [f"data.train={out / 'pairs.jsonl'}", "train.max_length=96"],
    }
    return {
        "classification": ["task=classification", f"model={bert}", f"data.train={out / 'cls.tsv'}",
                           "data.text=sentence"],
        "qa": ["task=qa", f"model={bert}", f"data.train={squad_slice['train']}", "data.doc_stride=16"],
        "summarization": ["task=summarization", f"model={bert}", f"data.train={out / 'sum.jsonl'}",
                          "summarization.max_target_length=8"],
        "masked_lm": ["task=masked_lm", f"model={bert}", f"data.train={out / 'text.txt'}",
                      "lm.pseudo_perplexity_samples=4"],
        **{task: [f"task={task}", f"model={lm_run}", *data] for task, data in decoder_data.items()},
        **{f"{task}/gpt2": [f"task={task}", f"model={decoders['gpt2']}", *data] for task, data in decoder_data.items()},
        "classification/llama": ["task=classification", f"model={decoders['llama']}", f"data.train={out / 'cls.tsv'}",
                                 "data.text=sentence"],
        **{f"summarization/{family}": ["task=summarization", f"model={base}", f"data.train={out / 'sum.jsonl'}",
                                       "summarization.max_target_length=8", "train.max_length=160"]
           for family, base in (("llama", lm_run), ("gpt2", decoders["gpt2"]))},
        "_eval": {"classification": out / "cls.tsv", "qa": squad_slice["eval"], "summarization": out / "sum.jsonl",
                  "causal_lm": stories_slice["validation"], "masked_lm": out / "text.txt", "sft": out / "sft.jsonl",
                  "preference": out / "pairs.jsonl"},
    }


def _train(capsys, setups, task, strategy, out: Path) -> tuple[int, list[str]]:
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    code = main(["train", str(config), *COMMON, *setups[task], f"strategy.name={strategy}", f"output={out}"])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_pair(capsys, setups, task, strategy, tmp_path):
    out = tmp_path / "run"
    code, err = _train(capsys, setups, task, strategy, out)
    if (task, strategy) in REFUSED:
        assert code == 2
        name = task.split("/")[0]
        assert err[-1].startswith(f"lmtune: error: strategy.name: {strategy} leaves no parameter of this {name} "
                                  "model to train (") and err[-1].endswith("use lora or full instead")
        assert not out.exists()
        return
    if (task, strategy) in NOT_QUANTIZED:
        assert code == 2 and err[-1] == ("lmtune: error: strategy.name: qlora cannot load this EncoderDecoderModel "
                                         "in 4 bits (transformers quantizes models it loads whole); use lora instead")
        assert not out.exists()
        return
    assert code == 0, err
    final = json.loads((out / "metrics.json").read_text())
    assert 0 < final["trainable_parameters"] <= final["parameters"]
    if strategy not in ("full", "llrd"):
        assert final["trainable_parameters"] < final["parameters"]
    import lmtune
    from lmtune.data.splits import load_tables

    run = lmtune.load(out)
    # the saved run is the trained one: evaluating the validation rows again reproduces what training logged
    again = run.evaluate(load_tables(run.config.data, run.task)["validation"])
    logged = final["validation"]
    # freeze and head were evaluated from the frozen-layer cache (the frozen bottom's outputs, kept in bf16);
    # the reloaded run recomputes them, which moves a loss in its 4th digit
    tolerance = {"rel": 1e-3} if strategy in ("freeze", "head") else {"abs": 1e-4}
    for name in run.task.metric_names:
        if name in logged:
            assert again[name] == pytest.approx(logged[name], **tolerance), name
    if strategy not in ("lora", "qlora"):  # the strategy trained what it says: something moved, nothing it froze
        start = dict(untrained_run(out).model.named_parameters())
        moved = [name for name, param in run.model.named_parameters() if not torch.equal(param, start[name])]
        assert moved and sum(start[n].numel() for n in moved) <= final["trainable_parameters"], moved
    if strategy == "lora":
        merged = lmtune.export(out, merge=True)
        again = dataclasses.replace(run, model=run.task.build_model(str(merged)).eval())
        assert again.evaluate(_eval_data(setups, task))["loss"] == pytest.approx(
            run.evaluate(_eval_data(setups, task))["loss"], abs=2e-3)


def _eval_data(setups, task):
    return str(setups["_eval"][task.split("/")[0]])  # a task on another base is evaluated on the same rows


@pytest.mark.parametrize("task", ["masked_lm", "summarization"])
def test_lora_trains_and_saves_the_weights_that_start_random(capsys, setups, task, tmp_path):
    """BERT2BERT's cross-attention and a masked-LM head the checkpoint lacks are new: LoRA must train them in
    full and save them with the adapter, or the reloaded run would have random ones."""
    out = tmp_path / "run"
    code, err = _train(capsys, setups, task, "lora", out)
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(str(out / "model" / "adapter_model.safetensors"), "pt") as handle:
        saved = list(handle.keys())
    new = "crossattention" if task == "summarization" else "predictions.transform"
    assert any(new in key and "lora_" not in key for key in saved), saved[:20]
    import lmtune

    first = lmtune.load(out)
    second = lmtune.load(out)  # reloading twice gives the same (trained, not random) weights
    names = [n for n, _ in first.model.named_parameters() if new in n]
    assert names
    for (name, a), (_, b) in zip(first.model.named_parameters(), second.model.named_parameters(), strict=True):
        if "original_module" not in name:  # PEFT keeps the base's (random, unused) module beside the trained copy
            assert torch.equal(a, b), name


def test_the_new_weights_are_named_in_one_line(capsys, caplog, setups, tmp_path):
    import logging

    with caplog.at_level(logging.INFO, logger="lmtune"):
        code, err = _train(capsys, setups, "qa", "head", tmp_path / "run")
    assert code == 0, err
    assert "model: newly initialised: qa_outputs (2 tensors); these train with every strategy" in caplog.text
