from lmtune.selection.leaderboard import Row, _winner
from lmtune.selection.space import TrialSpec, plan


def _row(strategy, mean, std, trainable, wall=10.0):
    return Row(strategy, "complete", mean, std, 3, wall, 100.0, trainable, 1, 0.0, f"/runs/{strategy}")


def test_plan_runs_every_strategy_at_defaults_first():
    specs = plan(["full", "lora"], [1, 2], variants=2)
    assert specs[:2] == [TrialSpec("full", 1, 0), TrialSpec("lora", 1, 0)]
    assert specs[2:4] == [TrialSpec("full", 2, 0), TrialSpec("lora", 2, 0)]
    assert len(specs) == 8 and len({s.key for s in specs}) == 8


def test_winner_is_the_cheapest_within_noise_of_the_best():
    rows = [_row("full", 0.900, 0.004, 22_000_000), _row("lora", 0.896, 0.003, 300_000),
            _row("head", 0.850, 0.002, 150_000)]
    assert _winner(rows, maximize=True) == "lora"  # 0.004 behind, within 0.004 + 0.003
    rows[1] = _row("lora", 0.880, 0.003, 300_000)
    assert _winner(rows, maximize=True) == "full"  # LoRA is clearly worse now
    assert _winner([_row("a", 0.5, 0.0, 10), _row("b", 0.498, 0.0, 5)], maximize=True) == "b"  # noise floor
    assert _winner([], maximize=True) is None
