"""Row-sparse word-embedding updates: equal to AdamW on the rows a batch uses, nothing on the others."""

import pytest
import torch

from lmtune.training.lazy_rows import LazyRowsAdamW, clip_grad_norm


class _Tiny(torch.nn.Module):
    def __init__(self, sparse: bool):
        super().__init__()
        torch.manual_seed(0)
        self.words = torch.nn.Embedding(50, 6, sparse=sparse)
        self.out = torch.nn.Linear(6, 1)

    def forward(self, ids):
        return self.out(self.words(ids)).pow(2).mean()


def _train(sparse: bool, batches, max_norm=None):
    model = _Tiny(sparse)
    groups = [{"params": [model.words.weight], "weight_decay": 0.1, "lazy_rows": sparse},
              {"params": list(model.out.parameters()), "weight_decay": 0.0}]
    optimizer = LazyRowsAdamW(groups, lr=0.05, fused=True)
    for ids in batches:
        model(ids).backward()
        if sparse:  # what the hook of `sparse_word_embeddings` does
            model.words.weight.grad = model.words.weight.grad.coalesce()
        if max_norm is not None:
            clip_grad_norm(list(model.parameters()), max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def test_lazy_rows_equal_dense_adamw_when_every_row_is_used_each_step():
    batches = [torch.randperm(50).repeat(2).view(4, 25) for _ in range(5)]  # each row twice per batch
    dense, _ = _train(False, batches, max_norm=0.5)
    lazy, _ = _train(True, batches, max_norm=0.5)
    torch.testing.assert_close(lazy.words.weight, dense.words.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lazy.out.weight, dense.out.weight, rtol=1e-5, atol=1e-6)


def test_rows_a_batch_does_not_use_are_left_alone_and_used_rows_move():
    start = _Tiny(True).words.weight.detach().clone()
    model, optimizer = _train(True, [torch.tensor([[1, 2, 3]]), torch.tensor([[3, 4]])])
    moved = (model.words.weight != start).any(dim=1).nonzero().flatten().tolist()
    assert moved == [1, 2, 3, 4]
    state = optimizer.state[model.words.weight]
    assert float(state["step"]) == 2 and state["exp_avg"][5:].abs().sum() == 0


def test_clip_takes_sparse_gradients_like_torch_takes_dense_ones():
    ids = torch.tensor([[1, 1, 7, 9]])
    sparse, dense = _Tiny(True), _Tiny(False)
    sparse(ids).backward()
    dense(ids).backward()
    sparse.words.weight.grad = sparse.words.weight.grad.coalesce()
    ours = clip_grad_norm(list(sparse.parameters()), 0.01)
    theirs = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    torch.testing.assert_close(sparse.words.weight.grad.to_dense(), dense.words.weight.grad)


def test_fast_dropout_drops_at_the_asked_rate_scales_and_is_swapped_back():
    from lmtune.training.dropout import FastDropout, fast_dropout, keep_mask

    torch.manual_seed(0)
    mask = keep_mask(torch.ones(400, 500, dtype=torch.bfloat16), 0.1)
    assert mask.dtype == torch.bfloat16
    assert mask.unique().float().tolist() == [0.0, pytest.approx(1 / 0.9, rel=1e-2)]
    assert float((mask == 0).float().mean()) == pytest.approx(0.1, abs=0.003)  # 200k draws: sd 0.0007
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.2))
    model.eval()
    with fast_dropout(model) as count:
        assert count == 1 and type(model[1]) is FastDropout and model[1].p == 0.2 and not model[1].training
        x = torch.ones(2, 3)
        assert torch.equal(model[1](x), x)  # eval: identity
    assert type(model[1]) is torch.nn.Dropout


def test_training_batches_pad_to_a_few_lengths_per_octave_within_the_limit():
    from lmtune.data.collate import bucketed_length, collate

    assert [bucketed_length(n) for n in (9, 15, 17, 129, 200, 256, 257)] == [9, 15, 18, 144, 208, 256, 288]
    ratios = [bucketed_length(n) / n for n in range(1, 2048)]
    assert min(ratios) == 1.0 and max(ratios) == pytest.approx(1152 / 1025)  # the worst: 1025 → 1024 + 1024/8
    assert sorted({bucketed_length(n) for n in range(1024, 2048)}) == [1024 + 128 * k for k in range(9)]  # to 2048
    examples = [{"input_ids": [5] * 130, "token_type_ids": [0] * 130, "labels": [1] * 130},
                {"input_ids": [5] * 3, "token_type_ids": [0] * 3, "labels": [1] * 3}]
    batch = collate(examples, 0, bucket_limit=512)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, 144) for k in batch}
    assert int(batch["attention_mask"].sum()) == 133 and int((batch["labels"] == -100).sum()) == 2 * 144 - 133
    assert collate(examples, 0, bucket_limit=136)["input_ids"].shape == (2, 136)  # never past the limit
    assert collate(examples, 0)["input_ids"].shape == (2, 130)  # evaluation: the longest row


def test_sparse_word_embeddings_only_while_training_and_never_for_tied_or_frozen_ones():
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from lmtune.training.lazy_rows import sparse_word_embeddings

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertForSequenceClassification(config)
    words = model.get_input_embeddings()
    with sparse_word_embeddings(model) as weight:
        assert weight is words.weight
        model(input_ids=torch.tensor([[1, 5, 5, 2]]), labels=torch.tensor([1])).loss.backward()
        grad = words.weight.grad
        assert grad.is_sparse and grad.is_coalesced() and grad.indices()[0].tolist() == [1, 2, 5]
    assert not words.sparse and not words.weight._post_accumulate_grad_hooks  # all undone
    with sparse_word_embeddings(BertForMaskedLM(config)) as tied:
        assert tied is None  # the output layer shares the matrix: its gradient is dense anyway
    words.weight.requires_grad_(False)
    with sparse_word_embeddings(model) as frozen:
        assert frozen is None and not words.sparse
