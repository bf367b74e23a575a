"""Explanations on a tiny BERT: attention extraction, rollout math, token alignment, attributions, checks."""

from __future__ import annotations

import json

import pytest
import torch

from lmtune.explanation.attention import attention_weights, eager_attention, rollout
from lmtune.explanation.attribution import encode, gradient_x_input, integrated_gradients, occlusion, word_scores
from lmtune.explanation.quality import (
    RANDOMIZATION_PASS,
    deletion_curve,
    deletion_test,
    randomized_copy,
    rank_correlation,
)
from lmtune.tasks.explained import ClassProbability
from tests.conftest import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = make_tiny_bert(tmp_path_factory.mktemp("tiny-explain"), layers=2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(path)


TARGET = ClassProbability(1, "1", "1")


def test_eager_extraction_matches_sdpa_and_restores_the_kernel(tiny):
    model, tokenizer = tiny
    example = encode(tokenizer, "an unbelievably moving film", 32)
    with torch.no_grad():
        fused = model(**example.features).logits
    attention = attention_weights(model, example.features)
    assert model.config._attn_implementation == "sdpa"
    seq = len(example.tokens)
    assert attention.shape == (2, 2, seq, seq)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 2, seq), atol=1e-5)
    with eager_attention(model), torch.no_grad():
        eager = model(**example.features).logits
    assert torch.allclose(fused, eager, atol=1e-5)


def test_rollout_math():
    eye = torch.eye(3).expand(2, 2, 3, 3)
    assert torch.allclose(rollout(eye), torch.eye(3))  # attending only to yourself: nothing mixes
    uniform = torch.full((1, 1, 3, 3), 1 / 3)
    assert torch.allclose(rollout(uniform), 0.5 * torch.eye(3) + 0.5 / 3)
    a = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    m0 = 0.5 * torch.eye(5) + 0.5 * a[0].mean(0)
    m1 = 0.5 * torch.eye(5) + 0.5 * a[1].mean(0)
    assert torch.allclose(rollout(a), m1 @ m0, atol=1e-6)
    assert torch.allclose(rollout(a).sum(-1), torch.ones(5), atol=1e-5)


def test_wordpieces_map_back_to_the_words_of_the_text(tiny):
    _, tokenizer = tiny
    example = encode(tokenizer, "An unbelievably moving film", 32)
    assert example.tokens[0] == "[CLS]" and example.tokens[-1] == "[SEP]"
    assert example.words == ["An", "unbelievably", "moving", "film"]  # original casing, whole words
    pieces = [t for t, w in zip(example.tokens, example.word_of, strict=True) if w == 1]
    assert "".join(p.removeprefix("##") for p in pieces) == "unbelievably" and len(pieces) > 1
    scores = [float(i) for i in range(len(example.tokens))]
    assert word_scores(example, scores)[1] == sum(i for i, w in enumerate(example.word_of) if w == 1)
    pair = encode(tokenizer, "a film", 32, pair="great fun")
    assert pair.words == ["a", "film", "great", "fun"]


def test_integrated_gradients_is_complete(tiny):
    model, tokenizer = tiny
    example = encode(tokenizer, "a gripping and moving film", 32)
    scores, delta = integrated_gradients(model, example, TARGET.score, tokenizer.pad_token_id, steps=64)
    baseline = example.features["input_ids"].clone()
    baseline[0, 1:-1] = tokenizer.pad_token_id
    with torch.no_grad():
        gap = TARGET.score(model(**example.features)) - TARGET.score(
            model(input_ids=baseline, **{k: v for k, v in example.features.items() if k != "input_ids"}))
    assert len(scores) == len(example.tokens)
    assert sum(scores) == pytest.approx(float(gap), abs=1e-3) and delta < 1e-3


def test_gradient_x_input_and_occlusion(tiny):
    model, tokenizer = tiny
    example = encode(tokenizer, "a gripping film", 32)
    grad = gradient_x_input(model, example, TARGET.score)
    assert len(grad) == len(example.tokens) and any(abs(g) > 0 for g in grad)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    occluded = occlusion(model, example, TARGET.score, tokenizer.mask_token_id)
    assert occluded[0] == 0.0 and occluded[-1] == 0.0  # special tokens are never occluded
    ids = example.features["input_ids"].clone()
    ids[0, 2] = tokenizer.mask_token_id
    with torch.no_grad():
        p = TARGET.score(model(**example.features))[0]
        q = TARGET.score(model(input_ids=ids, attention_mask=example.features["attention_mask"]))[0]
    assert occluded[2] == pytest.approx(float(p - q), abs=1e-6)


def test_deletion_curves_start_at_the_model_probability(tiny):
    model, tokenizer = tiny
    example = encode(tokenizer, "one two three four five six", 32)
    order = list(range(1, 7))
    curve = deletion_curve(model, example, TARGET.score, order)
    with torch.no_grad():
        assert curve[0] == pytest.approx(float(TARGET.score(model(**example.features))[0]), abs=1e-6)
    result = deletion_test(model, example, TARGET.score, [0.0] + [float(i) for i in range(6)] + [0.0])
    assert len(result["attribution"]) == len(result["random"]) == len(result["fractions"])
    assert result["beats_random"] == (result["area_attribution"] < result["area_random"])


def test_randomization_and_rank_correlation(tiny):
    model, _ = tiny
    before = [p.clone() for p in model.parameters()]
    clone = randomized_copy(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not torch.equal(next(clone.parameters()), next(model.parameters()))
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def test_explainer_on_a_run_returns_arrays_and_json(tmp_path):
    import lmtune
    from lmtune.explanation import Explainer

    tiny = make_tiny_bert(tmp_path / "tiny", layers=2)
    rows = [{"text": f"{'good' if i % 2 else 'bad'} film {i}", "label": ["neg", "pos"][i % 2]} for i in range(24)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lmtune.train({"model": str(tiny), "data": {"train": str(tmp_path / "d.jsonl")}, "output": str(tmp_path / "run"),
                  "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32"}})
    run = lmtune.load(tmp_path / "run")
    explanation = Explainer(run, steps=8, compare_base=True).explain("a good film", target="neg")
    assert explanation.target == "neg" and explanation.attention.ndim == 4
    assert set(explanation.attributions) == {"ig", "gradxinput", "occlusion"}
    assert explanation.base["attention_change_per_layer"] and len(explanation.base["attention_change_per_layer"]) == 2
    data = json.loads(json.dumps(explanation.to_dict()))
    assert data["words"] == ["a", "good", "film"]
    for check in data["randomization"].values():  # the verdict is the stated rule applied to the correlation
        assert check["passes"] == (check["rank_correlation"] < RANDOMIZATION_PASS)
    with pytest.raises(lmtune.LmtuneError, match="--target: 'maybe' is not a label of this run"):
        Explainer(run, ("gradxinput",), checks=False).explain("a good film", target="maybe")
