from lmtune.comparison.leaderboard import Row, _winner
from lmtune.comparison.space import TrialSpec, candidates, overrides_for, plan
from lmtune.tasks.classification import Classification
from lmtune.tasks.qa import QuestionAnswering


def _row(strategy, mean, std, trainable, wall=10.0):
    return Row(strategy, "complete", mean, std, 3, wall, 100.0, trainable, 1, 0.0, f"/runs/{strategy}")


def test_plan_runs_every_strategy_at_defaults_first():
    specs = plan(candidates(["full", "lora"]), [1, 2], variants=2)
    assert specs[:2] == [TrialSpec("full", 1, 0), TrialSpec("lora", 1, 0)]
    assert specs[2:4] == [TrialSpec("full", 2, 0), TrialSpec("lora", 2, 0)]
    assert len(specs) == 8 and len({s.key for s in specs}) == 8


def test_varied_settings_make_candidates_of_every_combination():
    entrants = candidates(["lora", "full"], {"preference.loss": ["dpo", "ipo"], "preference.beta": ["0.1", "0.5"]})
    assert [c.name for c in entrants[:4]] == ["lora+loss=dpo+beta=0.1", "lora+loss=dpo+beta=0.5",
                                              "lora+loss=ipo+beta=0.1", "lora+loss=ipo+beta=0.5"]
    assert len(entrants) == 8 and entrants[1].settings == ("preference.loss=dpo", "preference.beta=0.5")
    spec = plan(entrants, [3], variants=1)[1]
    assert spec.key == "lora+loss=dpo+beta=0.5-v0-s3"
    assert overrides_for(None, spec) == ["strategy.name=lora", "train.seed=3", "preference.loss=dpo",
                                         "preference.beta=0.5", "train.lr=0.0005"]


def test_winner_is_the_cheapest_within_noise_of_the_best():
    floor = Classification.metric("accuracy").min_delta
    rows = [_row("full", 0.900, 0.004, 22_000_000), _row("lora", 0.896, 0.003, 300_000),
            _row("head", 0.850, 0.002, 150_000)]
    assert _winner(rows, True, floor) == "lora"  # 0.004 behind, within 0.004 + 0.003
    rows[1] = _row("lora", 0.880, 0.003, 300_000)
    assert _winner(rows, True, floor) == "full"  # LoRA is clearly worse now
    assert _winner([_row("a", 0.5, 0.0, 10), _row("b", 0.498, 0.0, 5)], True, floor) == "b"  # noise floor
    assert _winner([_row("a", 0.5, 0.0, 10), _row("b", 0.49, 0.0, 5)], True, floor) == "a"  # beyond it
    assert _winner([], True, floor) is None


def test_the_noise_floor_is_the_metrics_own():
    """QA F1 is in percent: 0.3 points apart is noise there, while a fixed 0.005 floor would call it a win."""
    floor = QuestionAnswering.metric("f1").min_delta
    assert floor == 0.5
    rows = [_row("full", 58.0, 0.0, 22_000_000), _row("lora", 57.7, 0.0, 300_000)]
    assert _winner(rows, True, floor) == "lora"
    assert _winner(rows, True, 0.005) == "full"
    rows = [_row("full", 58.0, 0.0, 22_000_000), _row("lora", 56.0, 0.0, 300_000)]
    assert _winner(rows, True, floor) == "full"


def test_tuned_variants_and_explicit_storage_on_a_tiny_model(tmp_path):
    import json

    import optuna

    from lmtune.comparison import compare
    from lmtune.loader import load_config
    from tests.conftest import make_tiny_bert

    model_dir = make_tiny_bert(tmp_path / "tiny", layers=4, hidden=16)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"word{i % 5} thing", "label": i % 2}) + "\n" for i in range(40)))
    config = load_config({"model": str(model_dir), "data": {"train": str(data)},
                          "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"}, "output": str(tmp_path / "r")})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    board = compare(config, ["lora", "freeze"], trials=2, storage=storage, out_dir=tmp_path / "cmp", prune=False)
    assert {r.strategy for r in board.rows} == {"lora", "freeze"} and board.winner in {"lora", "freeze"}
    trials = optuna.load_study(study_name="lmtune-compare", storage=storage).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    tuned = {t.user_attrs["strategy"]: t.params for t in trials if t.user_attrs["variant"] == 1}
    assert set(tuned["lora"]) == {"lora.lr", "lora.warmup", "lora.r"}
    assert set(tuned["freeze"]) == {"freeze.lr", "freeze.warmup", "freeze.layers"}
    assert not (tmp_path / "cmp" / "study.db").exists()  # the explicit storage was used
