"""Generated replies scored during training (replies.samples): SFT of the real stories260K on SST-2 instructions,
judged by the shared SST-2 classifier run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_tsv

pytestmark = pytest.mark.integration


def test_sft_logs_scored_replies_that_match_what_the_final_model_says(stories260k, instructions, trained_run,
                                                                     tmp_path, cli):
    rows = [json.loads(line) for line in instructions.read_text().splitlines()]
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[100:112]))
    run = tmp_path / "sft"
    config = tmp_path / "sft.yaml"
    config.write_text("task: sft\n")
    result = cli("train", config, f"model={stories260k}", f"data.train={instructions}",
                 f"data.validation={validation}", "train.max_steps=36", "train.eval_every=12",
                 "train.batch_size=8", "train.lr=3e-3", "train.max_length=256", "replies.samples=8",
                 "replies.max_new_tokens=6", f"replies.judge={trained_run[0]}", "replies.judge_label=1",
                 f"output={run}")
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in log if r.get("split") == "validation"]
    assert {12, 24, 36} <= {r["step"] for r in evaluations}  # and at each epoch's end
    for record in evaluations:
        assert 0 <= record["reply_exact_match"] <= 100 and 0 <= record["reply_rougeL"] <= 100
        assert 0 < record["reply_judge"] < 100 and 0 < record["reply_length"] <= 6
    assert max(r["reply_exact_match"] for r in evaluations) >= 50  # it learned to answer "positive" / "negative"
    final = json.loads((run / "metrics.json").read_text())
    kept = final["restored_step"] or final["step"]  # the weights the run ended with
    last = next(r for r in evaluations if r["step"] == kept)

    # independently: the final model's greedy replies to the same 8 prompts, compared by hand
    import lmtune

    model = lmtune.load(run)
    replies = [model.generate(row, max_new_tokens=6).strip() for row in rows[100:108]]
    answers = [row["output"] if "output" in row else row["messages"][-1]["content"] for row in rows[100:108]]
    matches = sum(reply.lower() == answer.lower() for reply, answer in zip(replies, answers, strict=True))
    assert last["reply_exact_match"] == pytest.approx(100 * matches / 8)
    judge = lmtune.load(trained_run[0])
    judged = [p["scores"]["1"] for p in judge.predict(replies)]
    assert last["reply_judge"] == pytest.approx(100 * sum(judged) / 8, abs=0.5)  # bf16 batches of other shapes

    report = cli("report", run)
    assert report.returncode == 0 and "Generated replies (validation sample)" in (run / "report.html").read_text()


def test_replies_need_a_task_with_replies(tmp_path, sst2_slice, cli):
    result = cli("train", "examples/sst2.yaml", f"data.train={sst2_slice['train']}", "replies.samples=4",
                 f"output={tmp_path / 'x'}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "replies.samples: task 'classification' has no reference replies" in result.stderr
    assert read_tsv(sst2_slice["train"]) and not (tmp_path / "x").exists()
    half = cli("train", "examples/stories_sft.yaml", "replies.samples=4", "replies.judge=runs/x",
               f"output={tmp_path / 'y'}")
    assert "replies.judge and replies.judge_label: give both" in half.stderr
