"""Extractive QA from the CLI on a slice of the SQuAD split: train, eval, predict, resume, strategies."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, kill_at_checkpoint, lmtune_command, untrained_run

pytestmark = pytest.mark.integration


def _args(squad_slice, out, *extra):
    return (
        "train", str(REPO / "examples" / "squad.yaml"), f"data.train={squad_slice['train']}",
        f"data.validation={squad_slice['eval']}", f"output={out}", "train.max_length=128", "data.doc_stride=32",
        "train.batch_size=8", "train.max_steps=8", "train.eval_every=4", "train.log_every=2", "train.seed=3",
        *extra,
    )


def test_qa_trains_evaluates_predicts_and_resumes_exactly(squad_slice, tmp_path, cli):
    whole = tmp_path / "whole"
    result = cli(*_args(squad_slice, whole))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"validation_exact_match", "validation_f1", "validation_loss"} <= set(summary)

    killed = tmp_path / "killed"  # killed in its own process, resumed in this one
    kill_at_checkpoint(lmtune_command(*_args(squad_slice, killed)), killed, step=4)
    result = cli(*_args(squad_slice, killed))
    assert result.returncode == 0 and "resumed from step-4" in result.stderr, result.stderr
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (whole, killed))
    # rel: float noise between processes (see test_faults.LOSS_NOISE); a resume one batch off moves it far more
    assert got["validation"]["loss"] == pytest.approx(expected["validation"]["loss"], rel=1e-4)
    assert got["validation"]["f1"] == expected["validation"]["f1"]

    metrics = json.loads(cli("eval", whole, "--data", squad_slice["eval"], "--json").stdout)
    assert metrics["f1"] == expected["validation"]["f1"]  # eval reproduces the logged validation
    assert metrics["exact_match"] == expected["validation"]["exact_match"]
    assert metrics["loss"] < untrained_run(whole).evaluate(str(squad_slice["eval"]))["loss"]

    rows = [json.loads(x) for x in squad_slice["eval"].read_text().splitlines()[:3]]
    predictions = [json.loads(x) for x in cli("predict", whole, "--input", squad_slice["eval"]).stdout.splitlines()]
    assert len(predictions) == 16
    # predict and eval take one path: SQuAD's scores of predict's answers are eval's scores
    from lmtune.tasks.squad_metric import squad_scores

    references = [json.loads(x)["answers"]["text"] for x in squad_slice["eval"].read_text().splitlines()]
    assert squad_scores([p["answer"] for p in predictions], references) == {
        "exact_match": metrics["exact_match"], "f1": metrics["f1"]}
    for row, p in zip(rows, predictions, strict=False):
        assert p["text"] == row["question"] and row["context"][p["start"]:p["end"]] == p["answer"]
        assert 0 <= p["score"] <= 1

    # explain: attributions toward the answer's start and, separately, its end (a short input: occlusion
    # runs the model once per token, for each target, and again for the randomization check)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"question": "Who won the cup?", "context": "In Oslo, Anna won the cup."}) + "\n")
    result = cli("explain", whole, "--input", short, "--method", "gradxinput,occlusion", "--no-png", "--no-base",
                 "--out", tmp_path / "explain")
    assert result.returncode == 0, result.stderr
    start, end = (json.loads(x) for x in result.stdout.splitlines()[:2])
    assert start["target"].startswith("start of") and end["target"].startswith("end of")
    scores = json.loads((tmp_path / "explain" / "explain.json").read_text())
    assert len(scores) == 2 and scores[0]["deletion"] == {} and "occlusion" in scores[0]["randomization"]


@pytest.mark.parametrize("strategy", ["lora", "freeze"])
def test_qa_with_lora_and_freezing(squad_slice, tmp_path, strategy, cli):
    out = tmp_path / strategy
    result = cli(*_args(squad_slice, out, f"strategy.name={strategy}", "train.max_steps=2", "train.eval_every=0"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trainable_parameters"] < summary["parameters"]
    if strategy == "freeze":
        assert summary["cache"] in ("memory", "disk")  # the frozen bottom is computed once
    import lmtune

    [answer] = lmtune.load(out).predict([("Who won?", "The Denver Broncos won the game.")])
    assert "The Denver Broncos won the game."[answer["start"]:answer["end"]] == answer["answer"]


def test_qa_learns_to_answer(easy_qa, tmp_path, cli):
    """Eight SQuAD steps are too few to move F1 off zero; on questions whose answer follows one pattern, a few
    steps take the bundled model from no right answer to most of them."""
    out = tmp_path / "run"
    result = cli("train", REPO / "examples" / "squad.yaml", f"data.train={easy_qa['train']}",
                 f"data.validation={easy_qa['eval']}", f"output={out}", "train.max_length=64", "train.batch_size=8",
                 "train.max_steps=6", "train.eval_train_samples=8")
    assert result.returncode == 0, result.stderr
    trained = json.loads((out / "metrics.json").read_text())["validation"]
    untrained = untrained_run(out).evaluate(str(easy_qa["eval"]))
    assert untrained["f1"] < 50 and trained["f1"] > untrained["f1"] + 30  # it learned
