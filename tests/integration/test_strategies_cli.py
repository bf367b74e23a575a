"""Every strategy trains, saves, reloads and predicts through the CLI on the bundled MiniLM (SST-2 slice)."""

from __future__ import annotations

import json

import pytest

from lmtune.cli.main import main
from tests.conftest import REPO

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
