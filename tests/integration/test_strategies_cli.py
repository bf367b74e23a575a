"""Every strategy trains, saves, reloads and predicts through the CLI on the bundled MiniLM (SST-2 slice)."""

from __future__ import annotations

import json

import pytest

from lmtune.cli.main import main
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration


def _train(capsys, sst2_slice, out, *overrides):
    code = main(["train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
                 f"data.validation={sst2_slice['dev']}", f"output={out}", "train.epochs=1", "train.batch_size=16",
                 "train.eval_every=0", *overrides])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize("strategy", ["freeze", "head", "lora", "bitfit", "llrd"])
def test_strategy_trains_saves_reloads_predicts(capsys, sst2_slice, tmp_path, strategy):
    out = tmp_path / strategy
    summary = _train(capsys, sst2_slice, out, f"strategy.name={strategy}")
    assert summary["strategy"] == strategy and summary["model_bytes"] > 0 and summary["checkpoint_bytes"] > 0
    assert 0 < summary["trainable_parameters"] <= summary["parameters"]
    if strategy in ("head", "lora", "bitfit"):
        assert summary["trainable_parameters"] < 0.05 * summary["parameters"]
    inputs = tmp_path / "in.txt"
    inputs.write_text("a gorgeous , witty , seductive movie .\nthe worst film of the year .\n")
    assert main(["predict", str(out), "--input", str(inputs)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["label"] in (0, 1) for r in rows)


def test_lora_adapter_is_small_and_merged_export_predicts_the_same(capsys, sst2_slice, tmp_path):
    from transformers import pipeline

    import lmtune

    out = tmp_path / "lora"
    summary = _train(capsys, sst2_slice, out, "strategy.name=lora", "strategy.r=4")
    assert (out / "model" / "adapter_config.json").is_file()
    assert summary["model_bytes"] < 5_000_000  # adapter + head, not the 90 MB encoder
    assert main(["export", str(out)]) == 2
    assert "pass --merge" in capsys.readouterr().err
    assert main(["export", str(out), "--merge", "--out", str(tmp_path / "merged")]) == 0
    texts = ["a gorgeous , witty , seductive movie .", "the worst film of the year .", "it 's fine ."]
    adapter = lmtune.load(out).predict(texts)
    merged = pipeline("text-classification", model=str(tmp_path / "merged"), device="cpu", top_k=None)(texts)
    for mine, theirs in zip(adapter, merged, strict=True):
        probs = {p["label"]: p["score"] for p in theirs}
        for label, score in mine["scores"].items():
            assert probs[label] == pytest.approx(score, abs=0.02)  # bf16 autocast vs fp32


def test_a_frozen_base_stays_out_of_checkpoints_and_a_changed_one_stops_the_resume(capsys, sst2_slice, tmp_path):
    """A LoRA run's checkpoints hold what trains (the adapters and the new head) and the frozen base's checksums,
    not the 22M-weight base; a resume loads the base from its source and ends exactly as the uninterrupted run; a
    base that changed in between is refused in one line, before any step."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lmtune.models import resolve_model

    base = tmp_path / "base"
    shutil.copytree(resolve_model("bundled:minilm"), base)
    args = (f"model={base}", "strategy.name=lora", "train.max_steps=4", "train.eval_every=2", "train.epochs=1")
    whole = _train(capsys, sst2_slice, tmp_path / "whole", *args)
    run = tmp_path / "resumed"
    _train(capsys, sst2_slice, run, *args)
    checkpoint = run / "checkpoints" / "step-2"
    assert "model.safetensors" not in {p.name for p in checkpoint.iterdir()}
    # every file as readable as the run's config (safetensors writes its own files owner-only)
    mode = (run / "config.yaml").stat().st_mode & 0o777
    assert {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in [*checkpoint.iterdir(),
            *(run / "model").iterdir()]} == {p.relative_to(run).as_posix(): mode for p in [*checkpoint.iterdir(),
                                                                                         *(run / "model").iterdir()]}
    trained = load_file(checkpoint / "trained.safetensors")
    assert sum(t.numel() for t in trained.values()) == whole["trainable_parameters"]
    assert all(".lora_" in name or ".classifier." in name for name in trained), sorted(trained)[:3]

    def interrupted_after_step_2():
        shutil.rmtree(run / "model"), (run / "metrics.json").unlink(), shutil.rmtree(run / "checkpoints" / "step-4")

    interrupted_after_step_2()
    command = ["train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
               f"data.validation={sst2_slice['dev']}", f"output={run}", "train.batch_size=16", *args]
    resumed = run_cli(*command)  # in this process, as the whole run was trained: exactly its numbers
    assert resumed.returncode == 0 and "resumed from step-2 (epoch 0, batch 2)" in resumed.stderr, resumed.stderr
    same = ("step", "best_step", "best_accuracy", "validation_loss", "validation_accuracy", "validation_macro_f1")
    assert {k: json.loads(resumed.stdout.splitlines()[-1])[k] for k in same} == {k: whole[k] for k in same}
    interrupted_after_step_2()
    weights = load_file(base / "model.safetensors")
    name = next(k for k in weights if k.endswith("layer.3.attention.self.query.weight"))
    weights[name] += 1e-3  # the source is rewritten while the run is stopped
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    refused = run_cli(*command)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        f"lmtune: error: {checkpoint}: trained on a frozen base other than the one loaded now (bert.{name} differs): "
        "the model's source changed since the run started; restore it, or train again into a new output")
    assert not (run / "metrics.json").exists()


def test_a_checkpoint_that_holds_the_whole_model_still_resumes(sst2_slice, tmp_path, monkeypatch):
    """Checkpoints written before the base stayed out of them (the whole state dict in model.safetensors) resume
    as they did, to the uninterrupted run's numbers."""
    import shutil

    from lmtune.training import loop

    args = ["train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
            f"data.validation={sst2_slice['dev']}", "train.batch_size=16", "strategy.name=lora", "train.max_steps=4",
            "train.eval_every=2"]
    whole = run_cli(*args, f"output={tmp_path / 'whole'}")
    run = tmp_path / "old"
    with monkeypatch.context() as old_version:
        old_version.setattr(loop, "leaves_base_out", lambda model, sharded: False)  # the whole model, as before
        assert run_cli(*args, f"output={run}").returncode == 0
    assert (run / "checkpoints" / "step-2" / "model.safetensors").is_file()
    shutil.rmtree(run / "model"), (run / "metrics.json").unlink(), shutil.rmtree(run / "checkpoints" / "step-4")
    resumed = run_cli(*args, f"output={run}")
    assert resumed.returncode == 0 and "resumed from step-2 " in resumed.stderr, resumed.stderr
    same = ("step", "best_step", "validation_loss", "validation_accuracy")
    assert {k: json.loads(resumed.stdout.splitlines()[-1])[k] for k in same} == {
        k: json.loads(whole.stdout.splitlines()[-1])[k] for k in same}
    assert not (run / "checkpoints" / "step-4" / "model.safetensors").exists()  # written the new way
