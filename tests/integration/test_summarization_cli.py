"""Summarization from the CLI on DialogSum rows: train, SIGKILL + resume to identical metrics, eval, predict."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, kill_at_checkpoint, lmtune_command, untrained_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slices(dialogsum):
    return dialogsum


def _args(s, out):
    return ("train", str(REPO / "examples" / "dialogsum.yaml"), f"model={s['model']}", f"data.train={s['train']}",
            f"data.validation={s['test']}", f"output={out}", "train.max_steps=30", "train.eval_every=10",
            "train.batch_size=4", "train.max_length=96", "summarization.eval_generate=2", "summarization.num_beams=2",
            "summarization.max_target_length=16", "train.lr=1e-3")


def test_summarization_trains_resumes_evaluates_and_predicts(slices, tmp_path, cli):
    whole = tmp_path / "whole"
    result = cli(*_args(slices, whole))
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"  # killed in its own process, resumed in this one
    kill_at_checkpoint(lmtune_command(*_args(slices, killed)), killed, step=10)
    result = cli(*_args(slices, killed))
    assert result.returncode == 0 and "resumed from step-" in result.stderr, result.stderr
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (whole, killed))
    assert got["validation"]["loss"] == pytest.approx(expected["validation"]["loss"], abs=1e-5)
    assert got["validation"]["rougeL"] == pytest.approx(expected["validation"]["rougeL"], abs=1e-3)

    metrics = json.loads(cli("eval", whole, "--data", slices["test"], "--json").stdout)
    assert metrics["generated"] == 4 and {"rouge1", "rouge2", "rougeL"} <= set(metrics)
    untrained = untrained_run(whole).evaluate(str(slices["test"]))
    # it learned: the loss over every reference token fell clearly (10.3 → 9.2 measured). ROUGE over 4 greedy
    # summaries after 30 steps is chance: 2.6 to 10.1 across dropout seeds, and 0.0, like the untrained model's,
    # when this test ran after the replies test in one process (its curve left this one's at step 8, same seed;
    # the cause is not found yet). So ROUGE is checked for what it is, below, not for having improved.
    assert metrics["loss"] < untrained["loss"] - 0.5
    lines = [json.loads(x) for x in cli("predict", whole, "--input", slices["test"]).stdout.splitlines()]
    assert len(lines) == 4 and all(x["summary"].strip() for x in lines)
    # the summaries `predict` writes are the ones `eval` scored: their ROUGE-1, computed here independently
    # (best over each dialogue's references), is the eval's
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    rows = [json.loads(x) for x in slices["test"].read_text().splitlines()]
    best = [max(scorer.score(ref, line["summary"])["rouge1"].fmeasure for ref in [row["summary"], *row["references"]])
            for row, line in zip(rows, lines, strict=True)]
    assert 100 * sum(best) / len(best) == pytest.approx(metrics["rouge1"], abs=1e-3)
