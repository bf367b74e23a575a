"""Language-model parts: corpus splitting and packing, MLM masking, the chunked cross-entropy, SFT's
response-only loss, and llama2.c's tokenizer and weight layout."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lmtune.data.corpus import DOCUMENT_SEPARATOR, document_windows, pack, split_documents
from lmtune.data.masking import IGNORE_INDEX, example_rng, mask_example
from lmtune.tasks.losses import cross_entropy


def test_documents_split_on_separator_lines_else_blank_lines_else_lines():
    docs, lines = split_documents(f"One day.\nThe end.\n{DOCUMENT_SEPARATOR}\nNext story.\n{DOCUMENT_SEPARATOR}\n")
    assert docs == ["One day.\nThe end.", "Next story."] and lines == [1, 4]
    docs, lines = split_documents("First:\nspeech one\n\nSecond:\nspeech two\n")
    assert docs == ["First:\nspeech one", "Second:\nspeech two"] and lines == [1, 4]
    assert split_documents(" = Title = \nA paragraph.\n")[0] == ["= Title =", "A paragraph."]


def test_windows_keep_documents_apart_and_pack_loses_no_token():
    documents = [[1, 10, 11, 12], [1, 20], [1, 30, 31, 32, 33, 34]]
    windows = document_windows(documents, 4)
    assert [w["input_ids"] for w in windows] == [[1, 10, 11, 12], [1, 20], [1, 30, 31, 32], [33, 34]]
    assert [w["row"] for w in windows] == [0, 1, 2, 2]
    blocks = pack(windows, 5)
    assert [b["input_ids"] for b in blocks] == [[1, 10, 11, 12, 1], [20, 1, 30, 31, 32], [33, 34]]
    assert [b["row"] for b in blocks] == [0, 1, 2]  # the document each block starts in
    assert sum(len(b["input_ids"]) for b in blocks) == sum(map(len, documents))
    assert all("segment_ids" not in b for b in blocks)  # the classic stream: one sequence per block


def test_isolated_packing_marks_each_window_and_predicts_no_token_across_a_boundary():
    from lmtune.data.collate import collate

    windows = document_windows([[1, 10, 11, 12], [1, 20], [1, 30, 31, 32, 33, 34]], 4)
    blocks = pack(windows, 5, isolate=True)
    assert [b["input_ids"] for b in blocks] == [[1, 10, 11, 12, 1], [20, 1, 30, 31, 32], [33, 34]]
    assert [b["segment_ids"] for b in blocks] == [[0, 0, 0, 0, 1], [0, 1, 1, 1, 1], [0, 0]]
    # the label of a segment's first token would be predicted from another document's last token: ignored
    assert [b["labels"] for b in blocks] == [[1, 10, 11, 12, IGNORE_INDEX], [20, IGNORE_INDEX, 30, 31, 32], [33, 34]]
    batch = collate(blocks[:2], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 0, 1, 2, 3]]
    mask = batch["attention_mask"][:, 0]
    assert not mask[0, 4, :4].any() and mask[0, 3, :4].all()  # a new document sees only itself
    assert not mask[1, 2, 0] and mask[1, 2, 1]


def _example():
    # [CLS] un ##believ ##able film [SEP]: word 0 has three pieces
    return {"tokens": [101, 5, 6, 7, 8, 102], "words": [None, 0, 0, 0, 1, None]}


def test_whole_word_masking_masks_every_piece_of_a_word_and_only_targets_are_labelled():
    for seed in range(20):
        out = mask_example(_example(), random.Random(seed), 0.5, True, mask_id=103, vocab_size=200,
                           special_ids={101, 102, 103})
        masked = [i for i, label in enumerate(out["labels"]) if label != IGNORE_INDEX]
        assert masked in ([1, 2, 3], [4])  # a whole word, never part of one, never [CLS]/[SEP]
        assert all(out["labels"][i] == _example()["tokens"][i] for i in masked)
        assert all(out["input_ids"][i] == _example()["tokens"][i] for i in range(6) if i not in masked)


def test_masking_is_seeded_per_epoch_and_example():
    def mask(epoch):
        return mask_example(_example(), example_rng(7, epoch, 3), 0.3, False, 103, 200, {101, 102, 103})["labels"]

    assert mask(1) == mask(1)
    assert len({tuple(mask(epoch)) for epoch in range(10)}) > 1  # each epoch masks afresh


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_matches_pytorch(dtype, smoothing):
    torch.manual_seed(0)
    logits = torch.randn(1300, 97, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 97, (1300,))
    targets[::5] = -100
    ours = cross_entropy(logits, targets, smoothing)
    ours.backward()
    grad, logits.grad = logits.grad.clone(), None
    reference = F.cross_entropy(logits.float(), targets, ignore_index=-100, label_smoothing=smoothing)
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(grad.float(), logits.grad.float(), atol=1e-6)
    logits.grad = None
    (cross_entropy(logits, targets, smoothing) / 4).backward()  # a scaled loss (gradient accumulation)
    assert torch.allclose(4 * logits.grad.float(), grad.float(), atol=1e-6)


def test_the_reused_gradient_buffer_never_mixes_two_losses():
    torch.manual_seed(0)
    first, second = (torch.randn(600, 50, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    targets = torch.randint(0, 50, (600,))

    def reference(logits):
        return torch.autograd.grad(F.cross_entropy(logits.float(), targets), logits)[0]

    for _ in range(2):  # the second step reuses the first step's buffer
        cross_entropy(first, targets).backward()
        assert torch.equal(first.grad, reference(first))
        first.grad = None
    # two forwards before one backward (R-Drop's pattern): the second cannot take the lent buffer
    (cross_entropy(first, targets) + cross_entropy(second, targets)).backward()
    assert torch.equal(first.grad, reference(first)) and torch.equal(second.grad, reference(second))


def test_sparse_targets_are_scored_alone():
    logits = torch.randn(100, 11, requires_grad=True)
    targets = torch.full((100,), -100)
    targets[[3, 50]] = torch.tensor([1, 2])
    expected = F.cross_entropy(logits[[3, 50]], targets[[3, 50]])
    assert cross_entropy(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_an_isolated_block_gives_each_document_its_own_logits():
    """What isolation buys: a document's logits in a packed block equal its logits alone (within 1e-4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmtune.data.collate import collate, model_inputs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation="sdpa")).eval()
    documents = [[1, 10, 11, 12], [1, 20, 21], [1, 30, 31, 32, 33]]
    [block] = pack(document_windows(documents, 16), 16, isolate=True)
    with torch.no_grad():
        packed = model(**model_inputs(collate([block], pad_id=0))).logits[0]
        start = 0
        for document in documents:
            alone = model(input_ids=torch.tensor([document])).logits[0]
            assert float((packed[start:start + len(document)] - alone).abs().max()) <= 1e-4
            start += len(document)


def test_scoring_in_chunks_gives_the_same_sums_as_all_at_once(monkeypatch):
    """Evaluation turns target logits to fp32 a chunk at a time (memory); each row's NLL and top-1 count equal
    one cross-entropy over all its targets, computed independently here."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F

    import lmtune.tasks.language_model as language_model

    monkeypatch.setattr(language_model, "SCORED_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 50, generator=g).bfloat16()
    labels = torch.randint(0, 50, (3, 40), generator=g)
    labels[0, :10] = -100
    total, count, right = language_model.CausalLM().token_losses(SimpleNamespace(logits=logits), {"labels": labels})
    for row in range(3):
        gold = labels[row, 1:]
        keep = gold != -100
        chosen = logits[row, :-1][keep].float()
        assert total[row].item() == pytest.approx(F.cross_entropy(chosen, gold[keep], reduction="sum").item(), rel=1e-6)
        assert count[row].item() == keep.sum().item()
        assert right[row].item() == (chosen.argmax(-1) == gold[keep]).sum().item()


def test_the_cross_entropy_of_a_large_vocabulary_runs_in_small_chunks_with_the_same_value_and_gradient():
    """At a 200K vocabulary a chunk is 20 rows (its fp32 copy at most 16 MiB), not 512 (400 MB): several chunks,
    the same loss and gradient as torch's cross-entropy."""
    import torch
    import torch.nn.functional as F

    from lmtune.tasks.losses import chunk_rows, cross_entropy

    assert chunk_rows(8192) == 512 and chunk_rows(200_000) == 20
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 200_000, generator=g, requires_grad=True)
    targets = torch.randint(0, 200_000, (50,), generator=g)
    targets[3] = -100
    ours = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(logits, targets, ignore_index=-100)
    (expected,) = torch.autograd.grad(reference, logits)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(grad, expected, atol=1e-9)
