"""Extractive QA: official SQuAD metrics on hand-computed cases, span mapping with windows, post-processing."""

from __future__ import annotations

import pytest
import torch

from lmtune.config import DataConfig
from lmtune.data import Table
from lmtune.errors import DataError
from lmtune.models import load_tokenizer, resolve_model
from lmtune.tasks.qa import QuestionAnswering
from lmtune.tasks.squad_metric import normalize_answer, squad_scores

DATA = DataConfig(train="t.jsonl", text="question", text_pair="context", label="answers")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("bundled:minilm"))


def _table(rows):
    return Table("q.jsonl", ["question", "context", "answers"], rows)


def _row(question, context, answer, start=None):
    start = context.index(answer) if start is None else start
    return {"question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}


def test_squad_normalisation_and_scores_by_hand():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an Apple a day") == "apple day"
    # "the cat sat" vs "a cat sat on": tokens cat sat / cat sat on -> P 1, R 2/3, F1 0.8; vs "dog": 0
    assert squad_scores(["the cat sat"], [["a cat sat on", "dog"]]) == {"exact_match": 0.0, "f1": 80.0}
    # best reference counts: exact on the second one
    assert squad_scores(["Denver Broncos"], [["Broncos", "the Denver Broncos"]]) == {"exact_match": 100.0,
                                                                                     "f1": 100.0}
    # two questions: (EM 1, F1 1) and "in year 1990" (EM 0; F1 vs "year 1990s": P 1/3 R 1/2 -> 0.4,
    # vs "1990": P 1/3 R 1 -> 0.5; the best is 0.5)
    scores = squad_scores(["1990", "in the year 1990"], [["1990"], ["year 1990s", "1990"]])
    assert scores == {"exact_match": 50.0, "f1": 75.0}
    assert squad_scores([""], [[]]) == {"exact_match": 100.0, "f1": 100.0}  # unanswerable, answered ""


def test_answers_map_to_token_spans_in_the_right_window(tokenizer):
    filler = " ".join(f"word{i}" for i in range(120))
    context = f"{filler} The answer is Denver Broncos indeed. {filler}"
    table = _table([_row("who won?", context, "Denver Broncos")])
    task = QuestionAnswering({"doc_stride": 32})
    task.learn_from_rows(table, DATA)
    features = task.encode(table, tokenizer, DATA, max_length=96)
    assert len(features) > 3 and {f["example"] for f in features} == {0}
    holding = [f for f in features if f["start_positions"] != 0]
    assert holding, "some window must contain the answer"
    for f in holding:
        ids = f["input_ids"][f["start_positions"]: f["end_positions"] + 1]
        assert tokenizer.decode(ids) == "denver broncos"
        first, last = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
        assert context[first:last] == "Denver Broncos"
    assert all(f["end_positions"] == 0 for f in features if f["start_positions"] == 0)


def test_postprocessing_picks_the_best_valid_span_across_windows(tokenizer):
    context = "Paris is the capital of France and Lyon is a large city."
    table = _table([_row("capital?", context, "Paris")])
    task = QuestionAnswering({"max_answer_length": 3})
    [feature] = task.encode(table, tokenizer, DATA, max_length=64)
    n = len(feature["input_ids"])
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    paris, lyon = tokens.index("paris"), tokens.index("lyon")
    scores = torch.full((n, 2), -10.0)
    scores[paris, 0] = scores[paris, 1] = 5.0
    scores[lyon, 0], scores[lyon + 4, 1] = 9.0, 9.0  # higher, but 5 tokens long: too long to be chosen
    scores[0] = 0.0  # [CLS]
    [prediction] = task.predictions([scores], [feature], rows=1)
    assert prediction["answer"] == "Paris" and (prediction["start"], prediction["end"]) == (0, 5)
    second = dict(feature)
    better = scores.clone()
    better[lyon, 1] = 12.0  # a one-token span "Lyon" in another window of the same question wins
    [prediction] = task.predictions([scores, better], [feature, second], rows=1)
    assert prediction["answer"] == "Lyon"
    metrics = task.aggregate([scores], [feature])
    assert metrics["exact_match"] == 100.0 and metrics["f1"] == 100.0 and metrics["loss"] > 0
    task.options["allow_no_answer"] = True
    scores[0] = 20.0  # [CLS] scores above every span: no answer
    assert task.predictions([scores], [feature], rows=1)[0]["answer"] == ""


def test_bad_answers_name_the_row():
    task = QuestionAnswering()
    with pytest.raises(DataError, match=r"q.jsonl: row 2: answer 'Rome' is not at character 0 of the context"):
        task.learn_from_rows(_table([_row("q", "Paris is big", "Paris"), _row("q", "Paris is big", "Rome", start=0)]),
                             DATA)
    with pytest.raises(DataError, match=r"q.jsonl: row 1: column 'answers' must be"):
        task.learn_from_rows(_table([{"question": "q", "context": "c", "answers": "c"}]), DATA)
