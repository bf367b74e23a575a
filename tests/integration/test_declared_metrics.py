"""compare and diagnose on logs the real loop wrote, for tasks whose metrics are not fractions: QA's F1 is in
percent (compare's noise floor is 0.5 points, not 0.005) and a language model watches its loss."""

from __future__ import annotations

import json

import pytest

from lmtune.cli.main import main
from lmtune.tasks.qa import QuestionAnswering
from tests.conftest import REPO
from tests.integration.test_compare import _winner_by_the_stated_rule

pytestmark = pytest.mark.integration


def test_compare_on_qa_uses_the_percent_noise_floor(easy_qa, tmp_path, capsys):
    floor = QuestionAnswering.metric("f1").min_delta
    code = main(["compare", str(REPO / "examples" / "squad.yaml"), f"data.train={easy_qa['train']}",
                 f"data.validation={easy_qa['eval']}", f"output={tmp_path / 'qa'}", "train.max_length=64",
                 "train.batch_size=8", "train.eval_every=2", "train.eval_train_samples=12",
                 "--strategies", "head,full", "--budget", "6", "--no-prune"])
    assert code == 0
    board = json.loads((tmp_path / "qa-compare" / "leaderboard.json").read_text())
    assert board["metric"] == "f1" and f"max(std_best + std, {floor:g})" in board["rule"]
    assert all(r["status"] == "complete" and 0 <= r["mean"] <= 100 for r in board["rows"])
    assert board["winner"] == _winner_by_the_stated_rule(board["rows"], noise_floor=floor)
    capsys.readouterr()

    # the full-fine-tuning trial is still learning when its 6 steps end: F1 gains far more than its 0.5 floor
    trial = tmp_path / "qa-compare" / "trials" / "full-v0-s42"
    assert main(["diagnose", str(trial), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    log = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    validation = [x["f1"] for x in log if x["split"] == "validation"]
    assert len(validation) == 3 and validation[-1] > 50  # it learned; values in percent, not fractions
    assert validation == sorted(validation)
    assert diagnosis["state"] == "underfitting", diagnosis
    assert (f"the last evaluation improved f1 by {validation[-1] - validation[-2]:.4f}, more than the 0.5 that "
            "counts as a real difference for it") in diagnosis["findings"][0]["evidence"]


def test_a_language_model_still_learning_is_underfitting(stories_slice, tmp_path, capsys):
    run = tmp_path / "lm"
    code = main(["train", str(REPO / "examples" / "tinystories.yaml"), "model=scratch:tiny",
                 f"data.train={stories_slice['train']}", f"data.validation={stories_slice['validation']}",
                 f"output={run}", "lm.vocab_size=400", "train.max_steps=16", "train.eval_every=4",
                 "train.max_length=64", "train.batch_size=8", "train.lr=5e-4", "train.warmup=0",
                 "train.eval_train_samples=8",
                 "data.max_train_samples=20", "data.max_eval_samples=6", "train.log_every=1"])
    assert code == 0
    capsys.readouterr()
    assert main(["diagnose", str(run), "--json"]) == 0
    diagnosis = json.loads(capsys.readouterr().out)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if x["split"] == "validation"]
    assert losses == sorted(losses, reverse=True)  # the logged validation loss fell at every evaluation
    assert diagnosis["state"] == "underfitting"
    assert diagnosis["findings"][0]["title"] == ("underfitting: validation and training were still improving "
                                                 "when training ended")
    assert "train.epochs=" in " ".join(s for f in diagnosis["findings"] for t in f["suggestions"]
                                       for s in t["overrides"])


def test_compare_on_a_language_model_goes_on_past_a_refused_strategy(stories_slice, tmp_path, capsys):
    """The default strategy list includes head and bitfit, which a tied, bias-free decoder cannot train, and LoRA,
    which a new decoder cannot be trained into (its random base is saved nowhere): the comparison says so on the
    board and ranks the others instead of aborting."""
    code = main(["compare", str(REPO / "examples" / "tinystories.yaml"), "model=scratch:tiny",
                 f"data.train={stories_slice['train']}", f"data.validation={stories_slice['validation']}",
                 f"output={tmp_path / 'lm'}", "lm.vocab_size=400", "train.max_length=64", "train.batch_size=8",
                 "train.eval_train_samples=4", "data.max_train_samples=20", "data.max_eval_samples=4",
                 "--strategies", "head,lora,full", "--budget", "2", "--no-prune"])
    assert code == 0
    rows = {r["strategy"]: r for r in json.loads((tmp_path / "lm-compare" / "leaderboard.json").read_text())["rows"]}
    assert rows["head"]["status"].startswith("refused: strategy.name: head leaves no parameter of this causal_lm")
    assert rows["lora"]["status"].startswith("refused: ") and "saves adapters only" in rows["lora"]["status"]
    assert rows["full"]["status"] == "complete" and rows["full"]["mean"] > 0
    out, err = capsys.readouterr()
    assert "winner: full" in out
    assert "Traceback" not in err and "Trial" not in err  # the refusal is its one line, without Optuna's traceback
