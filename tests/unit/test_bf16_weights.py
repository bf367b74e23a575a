"""bf16 weight copies: fp32 masters get the gradients and keep updates that bf16 weights would round away."""

import torch
from transformers import BertConfig, BertForSequenceClassification

from lmtune.training.bf16_weights import Bf16Weights
from lmtune.training.lazy_rows import LazyRowsAdamW, sparse_word_embeddings


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).train()


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 120, (4, 9), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}


def test_masters_get_fp32_gradients_close_to_autocast_ones_and_the_model_is_untouched():
    model = _bert()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**_batch(0)).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    copies = Bf16Weights(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        copies(**_batch(0)).loss.backward()
    assert all(p.grad is not None for p in copies.copies) and all(p.grad is None for p in model.parameters())
    copies.gradients_to_masters()
    assert all(p.grad is None for p in copies.copies)  # cleared once moved
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
        if "key.bias" in name:  # softmax ignores a shift of every score: its true gradient is 0, both are noise
            continue
        cosine = torch.nn.functional.cosine_similarity(param.grad.flatten(), reference[name].flatten(), dim=0)
        assert cosine > 0.98, (name, float(cosine))


def test_two_backwards_add_up_in_fp32_like_gradient_accumulation():
    model = _bert()
    copies = Bf16Weights(model)
    expected = {}
    for seed in (1, 2):
        copies(**_batch(seed)).loss.backward()
        for master, copy in zip(copies.masters, copies.copies, strict=True):
            expected[id(master)] = expected.get(id(master), 0) + copy.grad.float()
        copies.gradients_to_masters()
    for master in copies.masters:
        torch.testing.assert_close(master.grad, expected[id(master)])


def test_updates_below_bf16_resolution_accumulate_in_the_masters_and_reach_the_copies():
    model = _bert()
    weight = model.classifier.weight
    start = weight.detach().clone()
    copies = Bf16Weights(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(200):
        for param in model.parameters():  # a fixed step of 2e-5: under half a bf16 ulp for weights above 0.01
            param.grad = torch.full_like(param, -2e-5)
        optimizer.step()
        copies.refresh()
    torch.testing.assert_close(weight.detach(), start + 200 * 2e-5)
    bf16_alone = start.to(torch.bfloat16)
    for _ in range(200):
        bf16_alone += 2e-5
    big = start.abs() > 0.02
    assert torch.equal(bf16_alone[big], start.to(torch.bfloat16)[big])  # what pure bf16 weights would keep
    copy = copies._by_name["classifier.weight"]
    assert torch.equal(copy, weight.detach().to(torch.bfloat16))


def test_sparse_embedding_rows_stay_in_step_with_their_masters_under_lazy_adamw():
    model = _bert()
    with sparse_word_embeddings(model) as rows:
        copies = Bf16Weights(model, rows)
        optimizer = LazyRowsAdamW([{"params": [rows], "lazy_rows": True, "weight_decay": 0.1},
                                   {"params": [p for p in model.parameters() if p is not rows]}], lr=1e-2)
        untouched = rows.detach()[100:].clone()
        for seed in (3, 4):
            batch = _batch(seed)
            batch["input_ids"] = batch["input_ids"] % 100  # rows 100+ never used
            copies(**batch).loss.backward()
            copies.gradients_to_masters()
            assert rows.grad.is_sparse and rows.grad.is_coalesced()
            optimizer.step()
            copies.refresh()
            optimizer.zero_grad(set_to_none=True)
    assert torch.equal(rows.detach()[100:], untouched)
    for name, master in zip(copies.names, copies.masters, strict=True):
        assert torch.equal(copies._by_name[name], master.detach().to(torch.bfloat16)), name
