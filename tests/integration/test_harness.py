"""Benchmark evaluation through lm-evaluation-harness, before vs after tuning, on the shipped local tasks
(examples/harness: SST-2 dev as multiple choice, a TinyStories cloze) and the real stories260K."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import REPO, SHARED_DATA, run_cli, shared

pytestmark = pytest.mark.integration

TASKS = [str(REPO / "examples" / "harness" / "stories_cloze.yaml"), str(REPO / "examples" / "harness" /
                                                                         "sst2_sentiment.yaml")]
DOCS = 24


def _harness_directly(model_dir, names) -> dict:
    """The harness on its own, loading the model from its directory (not through lmtune)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), batch_size=16, device="cpu", dtype="float32")
    manager = TaskManager(include_path=str(REPO / "examples" / "harness"), include_defaults=False)
    return simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=DOCS, bootstrap_iters=0)["results"]


@pytest.fixture(scope="module")
def forgot(stories260k, tmp_path_factory):
    """stories260K fully tuned, hard, on Shakespeare: it should lose its TinyStories cloze."""
    shared(SHARED_DATA / "corpus" / "tiny_shakespeare.txt")
    out = tmp_path_factory.mktemp("harness")
    text = out / "shakespeare.txt"
    text.write_text((SHARED_DATA / "corpus" / "tiny_shakespeare.txt").read_text(encoding="utf-8")[:60000])
    run = out / "forgot"
    trained = run_cli("train", "examples/tinystories.yaml", f"data.train={text}", f"model={stories260k}",
                      "train.max_steps=40", "train.eval_every=10", "train.max_length=64", "train.batch_size=8",
                      "train.lr=3e-3", f"output={run}")
    assert trained.returncode == 0, trained.stderr
    result = run_cli("eval", run, "--harness", ",".join(TASKS), "--max-samples", str(DOCS))
    assert result.returncode == 0, result.stderr
    return run, result


def test_before_and_after_are_the_harness_own_numbers_with_the_difference(forgot, stories260k):
    run, result = forgot
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["task", "metric", "before", "after", "difference", "(±", "standard", "error)"]
    assert any(line.startswith("stories_cloze") and " acc " in line and "(paired)" in line for line in lines)
    assert lines[-1].startswith(f"before: the model the run started from; {DOCS} documents per task; recorded in")
    recorded = json.loads((run / "harness.json").read_text())
    cloze = recorded["tasks"]["stories_cloze"]["metrics"]
    sentiment = recorded["tasks"]["sst2_sentiment"]["metrics"]["acc"]

    # independently: the harness loading each model from its own directory gives the same scores
    after = _harness_directly(run / "model", ["stories_cloze"])
    before = _harness_directly(stories260k / "model", ["stories_cloze"])
    assert cloze["acc"]["after"] == pytest.approx(after["stories_cloze"]["acc,none"], abs=1e-9)
    assert cloze["acc"]["before"] == pytest.approx(before["stories_cloze"]["acc,none"], abs=1e-9)
    assert cloze["perplexity"]["before"] == pytest.approx(before["stories_cloze"]["perplexity,none"], rel=1e-5)
    assert 0 <= sentiment["before"] <= 1 and sentiment["se_kind"] == "paired"
    for row in (*cloze.values(), sentiment):
        assert row["difference"] == pytest.approx(row["after"] - row["before"])
    # the paired standard error of an accuracy difference is bounded by the independent one's order of size
    acc = cloze["acc"]
    assert acc["se_kind"] == "paired" and 0 < acc["difference_se"] <= 2 * math.hypot(acc["before_se"],
                                                                                      acc["after_se"])
    assert cloze["perplexity"]["se_kind"] == "independent" and not cloze["perplexity"]["higher_is_better"]
    # tuned hard on Shakespeare, the model lost most of its TinyStories cloze
    assert acc["difference"] < -3 * acc["difference_se"]


def test_forgetting_is_a_finding_and_a_report_section(forgot, cli):
    run, _ = forgot
    diagnosis = cli("diagnose", run)
    assert diagnosis.returncode == 0, diagnosis.stderr
    text = diagnosis.stdout
    assert "* tuning cost the model on benchmarks it was not tuned for" in text
    assert "stories_cloze acc: " in text and "standard errors worse" in text
    assert "strategy.name=lora" in text and "sst2_sentiment" not in text.split("not tuned for")[1].split("* ")[0]
    assert text.splitlines()[0] == f"diagnosis of {run}: FORGETTING"  # its curves alone look healthy
    report = cli("report", run)
    assert report.returncode == 0, report.stderr
    html = (run / "report.html").read_text()
    assert "Before and after tuning (benchmarks)" in html and "<td>stories_cloze</td><td>acc</td>" in html


def test_a_lora_run_is_compared_with_its_adapters_off(stories260k, stories_slice, forgot, tmp_path, cli):
    """The "before" of a LoRA run is the same model with the adapters switched off: the base's own scores."""
    import lmtune

    run = tmp_path / "lora"
    trained = cli("train", "examples/tinystories.yaml", f"data.train={stories_slice['train']}", f"model={stories260k}",
                  "strategy.name=lora", "train.max_steps=3", "train.eval_every=3", "train.max_length=64",
                  "train.batch_size=4", "train.lr=5e-3", f"output={run}")
    assert trained.returncode == 0, trained.stderr
    result = lmtune.harness(run, TASKS[0], limit=DOCS)  # the Python API
    base = json.loads((forgot[0] / "harness.json").read_text())["tasks"]["stories_cloze"]["metrics"]
    assert result["tasks"]["stories_cloze"]["metrics"]["acc"]["before"] == base["acc"]["before"]
    assert result["tasks"]["stories_cloze"]["metrics"]["perplexity"]["before"] == pytest.approx(
        base["perplexity"]["before"], rel=1e-5)


def test_harness_refusals_are_one_line(trained_run, forgot, cli):
    run, _ = forgot
    cases = {
        (str(trained_run[0]), "x"): "is a classification run; the harness evaluates language models",
        (str(run), "no_such_task_anywhere"): "--harness: no harness task named no_such_task_anywhere",
        (str(run), "missing/task.yaml"): "--harness: missing/task.yaml does not exist",
    }
    for (where, tasks), message in cases.items():
        result = cli("eval", where, "--harness", tasks)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    assert "give --data FILE (labelled rows) or --harness" in cli("eval", run).stderr
