"""Scoring on bf16 weight copies: the same numbers as a bf16 model, the fp32 weights back afterwards."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lmtune.evaluation.low_precision import bf16_inputs, bf16_weights, wants_bf16


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_a_pass_on_copies_equals_a_bf16_model_and_leaves_the_fp32_weights_untouched():
    model = _bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 100, (5, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), bf16_weights(model), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = model(input_ids=ids).logits
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    bf16_model = _bert().to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = bf16_model(input_ids=ids).logits
    assert torch.equal(ours, theirs)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, before[name]), name


def test_a_cache_makes_the_copies_once_and_the_weights_come_back_after_an_error():
    model = _bert()
    cache: dict = {}
    with bf16_weights(model, cache):
        first = {id(p): p.data_ptr() for p in model.parameters()}
    assert len(cache) == len(first)
    with pytest.raises(RuntimeError, match="a batch failed"), bf16_weights(model, cache):
        second = {id(p): p.data_ptr() for p in model.parameters()}
        raise RuntimeError("a batch failed")
    assert second == first  # the same copies, not new ones
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_only_floating_inputs_that_are_not_targets_become_bf16_and_the_precision_is_read_from_either_source():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "hidden": torch.ones(2, 3, 4),
             "labels": torch.tensor([0.5, 1.5])}
    out = bf16_inputs(batch, keep={"labels"})
    assert out["input_ids"].dtype == torch.long and out["hidden"].dtype == torch.bfloat16
    assert out["labels"].dtype == torch.float32
    assert wants_bf16(None, torch.autocast("cpu", dtype=torch.bfloat16))
    assert not wants_bf16(None, torch.autocast("cpu", dtype=torch.float16)) and not wants_bf16(None, None)
