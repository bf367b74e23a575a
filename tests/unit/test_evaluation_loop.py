"""The one evaluation loop: every task's work is split the same way over processes and gathered back to
exactly what one process computes (summarization's generation and the masked LM's pseudo-perplexity too)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.evaluation import evaluate_examples, score_examples
from lmtune.models import load_tokenizer
from lmtune.tasks.classification import Classification
from lmtune.tasks.masked_lm import MaskedLM
from lmtune.tasks.summarization import Summarization
from tests.conftest import make_tiny_bert

TEXTS = [f"{word} film number {i} was {'good' if i % 2 else 'bad'} and long" * (1 + i % 3)
         for i, word in enumerate(["a", "the", "one", "that", "this", "another", "my"])]


@dataclass
class _Process:
    """What the loop reads of an accelerator: its rank, the world size, its precision and autocast."""

    process_index: int
    num_processes: int
    mixed_precision: str = "no"

    def autocast(self):
        return nullcontext()


def _sharded(monkeypatch, model, examples, task, pad_id, world=2):
    """What the last of ``world`` processes gathers, each earlier one having handed in its part."""
    shards = []

    def gather(obj):
        shards.append(obj[0])
        return list(shards)

    monkeypatch.setattr("accelerate.utils.gather_object", gather)
    for rank in range(world - 1):  # an earlier rank sees only the parts handed in so far: incomplete
        with pytest.raises(KeyError):
            score_examples(model, examples, task, 2, pad_id, accelerator=_Process(rank, world))
    return score_examples(model, examples, task, 2, pad_id, accelerator=_Process(world - 1, world))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("bert"), masked_lm=True))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("kind", ["classification", "masked_lm", "summarization"])
def test_two_processes_gather_exactly_what_one_computes(monkeypatch, bert, kind):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(bert)
    data = DataConfig(train="x", text="text", label="label")
    if kind == "classification":
        task, rows = Classification(), [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)]
        task.learn_from_rows(Table("t", ["text", "label"], rows), data)
    elif kind == "masked_lm":
        task, rows = MaskedLM(pseudo_perplexity_samples=3), [{"text": t} for t in TEXTS]
    else:
        task = Summarization({"num_beams": 1, "max_target_length": 6, "min_length": 1})
        rows = [{"document": t, "summary": t.split(" and ")[0]} for t in TEXTS]
        data = DataConfig(train="x", text="document", label="summary")
    model = task.build_model(bert).eval()
    examples = task.encode(Table("t", list(rows[0]), rows), tokenizer, data, 32)
    alone = score_examples(model, examples, task, 2, tokenizer.pad_token_id)
    together = _sharded(monkeypatch, model, examples, task, tokenizer.pad_token_id)
    assert _same(alone, together)
    if kind == "summarization":
        assert all(r[2] is not None for r in alone)  # every example was summarized, on one process or two
    if kind == "masked_lm":
        assert sum(r[4] > 0 for r in alone) == 3  # pseudo-perplexity on the first 3 examples only
        metrics = evaluate_examples(model, examples, task, 2, tokenizer.pad_token_id)
        assert metrics["pseudo_perplexity"] > 1


def test_the_loop_scores_in_eval_mode_and_restores_train_mode(bert):
    """Dropout must be off while scoring (masked-LM pseudo-perplexity was once computed with it on)."""
    tokenizer = load_tokenizer(bert)
    task = MaskedLM(pseudo_perplexity_samples=2)
    model = task.build_model(bert).train()
    rows = [{"text": t} for t in TEXTS]
    examples = task.encode(Table("t", ["text"], rows), tokenizer, DataConfig(train="x"), 32)
    first = evaluate_examples(model, examples, task, 4, tokenizer.pad_token_id)
    second = evaluate_examples(model, examples, task, 4, tokenizer.pad_token_id)
    assert first == second and model.training
