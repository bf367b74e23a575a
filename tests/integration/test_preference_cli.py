"""Preference tuning through the CLI on real HH-RLHF pairs and the real stories260K: it learns, resumes exactly,
reports bad pairs, stops on a non-finite loss, and its result generates, evaluates and merges like any decoder run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, kill_at_checkpoint, lmtune_command, shared

pytestmark = pytest.mark.integration
HH = SHARED_DATA / "preference" / "hh_harmless_base_test.jsonl"


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory):
    """30 real HH pairs for training and 8 more for validation (short ones, so that few are cut; none of the file's
    few pairs with an empty reply)."""

    def last_reply(side: str) -> str:
        return side.rsplit("\n\nAssistant:", 1)[1].strip()

    lines = [line for line in shared(HH).read_text(encoding="utf-8").splitlines()[:200]
             if all(last_reply(json.loads(line)[side]) for side in ("chosen", "rejected"))]
    lines = sorted(lines, key=len)[:38]
    out = tmp_path_factory.mktemp("hh")
    (out / "train.jsonl").write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    (out / "dev.jsonl").write_text("\n".join(lines[30:]) + "\n", encoding="utf-8")
    return out


def _args(stories260k, hh_pairs, out, *extra):
    return ("train", "-", "task=preference", f"model={stories260k}", f"data.train={hh_pairs / 'train.jsonl'}",
            f"data.validation={hh_pairs / 'dev.jsonl'}", f"output={out}", "strategy.name=lora",
            "train.max_length=160", "train.batch_size=6", "train.lr=5e-3", "train.eval_train_samples=30",
            "train.seed=5", *extra)


def _config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


def _train(cli, tmp_path, stories260k, hh_pairs, out, *extra):
    args = list(_args(stories260k, hh_pairs, out, *extra))
    args[1] = str(_config(tmp_path))
    return cli(*args)


def _samples(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"train_sample"' in line]


def test_dpo_learns_the_training_pairs_and_resumes_exactly(cli, tmp_path, stories260k, hh_pairs):
    whole = tmp_path / "whole"
    result = _train(cli, tmp_path, stories260k, hh_pairs, whole, "train.max_steps=20", "train.eval_every=10")
    assert result.returncode == 0, result.stderr
    assert "computed the reference scores of 38 examples" in result.stderr
    samples = _samples(whole)
    # the reference is the starting model: the first evaluation is already off it, the last far from it
    assert samples[-1]["reward_accuracy"] > 0.9 and samples[-1]["reward_margin"] > samples[0]["reward_margin"] > 0
    assert samples[-1]["loss"] < samples[0]["loss"] < 0.6931
    final = json.loads((whole / "metrics.json").read_text())
    assert set(final["validation"]) >= {"loss", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp",
                                        "chosen_logp_sum", "rejected_logp_sum", "kl"}

    killed = tmp_path / "killed"  # killed in its own process after its first checkpoint, resumed in this one
    args = list(_args(stories260k, hh_pairs, killed, "train.max_steps=20", "train.eval_every=10"))
    args[1] = str(_config(tmp_path))
    kill_at_checkpoint(lmtune_command(*args), killed, step=10)
    result = cli(*args)
    assert result.returncode == 0 and "resumed from step-10" in result.stderr, result.stderr
    assert "reused the reference scores in reference-logps.json" in result.stderr
    again = json.loads((killed / "metrics.json").read_text())
    # resumed at an epoch's end (step 10) that was evaluated: not evaluated a second time
    validated = [[json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
                  if '"validation"' in x] for run in (whole, killed)]
    assert validated[1] == validated[0] == [5, 10, 15, 20], validated
    for name in ("loss", "reward_accuracy", "reward_margin", "kl"):
        assert again["validation"][name] == pytest.approx(final["validation"][name], abs=1e-6), name

    # the report charts how the preference was won: both replies' log-probabilities, the margin, the drift
    assert cli("report", whole).returncode == 0
    page = (whole / "report.html").read_text()
    for title in ("Chosen logp and rejected logp", "Reward margin", "Kl"):
        assert f">{title}<" in page, title

    # eval recomputes the reference (adapters off) and reproduces what training logged
    metrics = json.loads(cli("eval", whole, "--data", hh_pairs / "dev.jsonl", "--json").stdout)
    for name in ("loss", "reward_accuracy", "reward_margin", "chosen_logp", "kl"):
        assert metrics[name] == pytest.approx(final["validation"][name], abs=2e-3), name

    # the result is an ordinary decoder run: it generates, and merges to the same model
    text = cli("generate", whole, "--prompt", "\n\nHuman: What is a cat?\n\nAssistant:", "--max-new-tokens", "8",
               "--temperature", "0")
    assert text.returncode == 0 and text.stdout.strip(), text.stderr
    import lmtune

    merged = lmtune.export(whole, merge=True)
    import dataclasses

    run = lmtune.load(whole)  # compared in fp32: in bf16, W + BA rounds differently from W and BA apart
    run = dataclasses.replace(run, config=dataclasses.replace(
        run.config, train=dataclasses.replace(run.config.train, precision="fp32")))
    flat = dataclasses.replace(run, model=run.task.build_model(str(merged)).eval(), bf16_copies={})
    # merged weights score as the adapter did; the reference is then the start model, loaded for it
    merged_scores, adapter_scores = (r.evaluate(str(hh_pairs / "dev.jsonl")) for r in (flat, run))
    for name in ("chosen_logp", "rejected_logp", "reward_margin", "loss", "kl"):
        assert merged_scores[name] == pytest.approx(adapter_scores[name], abs=1e-4), name


def test_full_weights_use_the_cached_reference_and_eval_loads_the_start(cli, tmp_path, stories260k, hh_pairs):
    out = tmp_path / "full"
    result = _train(cli, tmp_path, stories260k, hh_pairs, out, "strategy.name=full", "train.lr=1e-3",
                    "train.max_steps=6", "preference.loss=ipo")
    assert result.returncode == 0, result.stderr
    final = json.loads((out / "metrics.json").read_text())["validation"]
    assert final["kl"] > 0  # the weights moved away from the reference
    metrics = json.loads(cli("eval", out, "--data", hh_pairs / "dev.jsonl", "--json").stdout)
    assert metrics["loss"] == pytest.approx(final["loss"], abs=2e-3)
    assert metrics["kl"] == pytest.approx(final["kl"], rel=0.05)


def test_bad_pairs_are_reported_or_refused(cli, tmp_path, stories260k, hh_pairs):
    rows = (hh_pairs / "train.jsonl").read_text().splitlines()[:12]
    first = json.loads(rows[0])
    rows += [json.dumps({"chosen": first["chosen"], "rejected": first["chosen"]}),
             json.dumps({"prompt": "Hello", "chosen": "", "rejected": " there"})]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "skip"
    result = _train(cli, tmp_path, stories260k, hh_pairs, out, f"data.train={data}", "train.max_steps=1")
    assert result.returncode == 0, result.stderr
    assert (f"{data}: 2 of 14 pairs left out: 1 where a reply is empty (first: {data}:14); 1 where the two "
            f"replies are identical (first: {data}:13)") in result.stderr
    assert json.loads((out / "task.json").read_text())["bad_pairs"] == {
        str(data): {"empty": 1, "identical": 1}}
    refused = tmp_path / "refused"
    result = _train(cli, tmp_path, stories260k, hh_pairs, refused, f"data.train={data}", "data.on_bad_rows=error")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"lmtune: error: {data}:13: the two replies are identical (data.on_bad_rows=error; set it to skip to leave "
        "such pairs out)")
    assert not refused.exists()


def test_a_non_finite_loss_stops_the_run_in_one_line(cli, tmp_path, stories260k, hh_pairs):
    out = tmp_path / "nan"
    result = _train(cli, tmp_path, stories260k, hh_pairs, out, "train.lr=1e4", "train.max_steps=12",
                    "train.eval_every=2", "regularization.max_grad_norm=null", "train.precision=fp32")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("lmtune: error: training loss is nan at step ") and "a smaller preference.beta" in line
    assert "regularization.max_grad_norm=1.0" in line
    step = int(line.split(" at step ")[1].split(":")[0])
    kept = sorted((out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
    if step > 2:  # what was written before the loss broke is kept, whole
        assert kept and f"the last good checkpoint, {kept[-1].name}, is kept" in line


def test_compare_ranks_losses_and_betas_by_reward_accuracy_then_margin(cli, tmp_path, stories260k, hh_pairs):
    args = list(_args(stories260k, hh_pairs, tmp_path / "run", "train.eval_every=2"))
    args[0], args[1] = "compare", str(_config(tmp_path))
    result = cli(*args, "--strategies", "lora", "--vary", "preference.loss=dpo,simpo", "--vary",
                 "preference.beta=0.1,2", "--budget", "4", "--no-prune", "--out", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    names = [row["strategy"] for row in board["rows"]]
    assert sorted(names) == ["lora+loss=dpo+beta=0.1", "lora+loss=dpo+beta=2", "lora+loss=simpo+beta=0.1",
                             "lora+loss=simpo+beta=2"]
    assert board["metric"] == "reward_accuracy" and "then the best reward_margin" in board["rule"]
    keys = [(row["mean"], row["secondary"]) for row in board["rows"]]
    assert keys == sorted(keys, reverse=True)  # accuracy first, margin breaks ties
    for row in board["rows"]:  # each candidate ran with its own settings
        config = (tmp_path / "cmp" / "trials" / f"{row['strategy']}-v0-s5" / "config.yaml").read_text()
        loss, beta = row["strategy"].split("+")[1:]
        assert f"loss: {loss.split('=')[1]}" in config and f"beta: {float(beta.split('=')[1])}" in config
    assert cli("compare", str(_config(tmp_path)), "--vary", "preference.loss").returncode == 2


def longest(prompt, completions):
    """A judge for `lmtune pairs --judge module:function`: longer completions score higher."""
    return [float(len(c)) for c in completions]


def test_pairs_from_a_model_and_a_judge(cli, tmp_path, stories260k, trained_run):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ("Once upon a time", "The little dog", "Lily saw a big", "One day, Tom")))
    out = tmp_path / "pairs.jsonl"
    result = cli("pairs", stories260k, "--prompts", prompts, "--judge", f"{__name__}:longest", "--out", out,
                 "--samples", "3", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["prompts"] == 4 and len(rows) == counts["pairs"] >= 3
    assert counts["pairs"] + counts["ties"] + counts["too_few_completions"] == 4
    for row in rows:  # the best and the worst of the samples, by the judge's own scores
        assert row["chosen_score"] == len(row["chosen"]) > row["rejected_score"] == len(row["rejected"])
    # sampling is seeded: the same command writes the same pairs
    again = tmp_path / "again.jsonl"
    assert cli("pairs", stories260k, "--prompts", prompts, "--judge", f"{__name__}:longest", "--out", again,
               "--samples", "3", "--max-new-tokens", "12").returncode == 0
    assert again.read_text() == out.read_text()

    # a classification run as the judge: the score is its probability of the label for prompt + completion
    judged = tmp_path / "judged.jsonl"
    run_dir, _ = trained_run
    result = cli("pairs", stories260k, "--prompts", prompts, "--judge", run_dir, "--label", "1", "--out", judged,
                 "--samples", "3", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    import lmtune

    judge = lmtune.load(run_dir)
    for row in (json.loads(line) for line in judged.read_text().splitlines()):
        texts = [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
        scores = [p["scores"]["1"] for p in judge.predict(texts)]
        # the judge ran in bf16 on batches padded to another length than these two: bf16 matmuls of other shapes
        # accumulate in another order (2.4e-4 apart was seen), so the scores agree to bf16's precision, not fp32's
        assert scores == pytest.approx([row["chosen_score"], row["rejected_score"]], abs=2e-3)
        assert scores[0] > scores[1]

    bad = cli("pairs", stories260k, "--prompts", prompts, "--judge", run_dir, "--label", "joy", "--out", tmp_path / "x")
    assert bad.returncode == 2 and bad.stderr.strip().endswith(f"--label: 'joy' is not a label of {run_dir}; it has "
                                                              "'0', '1'")
    assert not (tmp_path / "x").exists()
    # the pairs are preference data as they are
    result = cli("train", _config(tmp_path), "task=preference", f"model={stories260k}", f"data.train={out}",
                 "data.validation_split=0.25", "train.max_steps=1", "train.batch_size=2", f"output={tmp_path / 'dpo'}")
    assert result.returncode == 0, result.stderr
