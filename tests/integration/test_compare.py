"""`lmtune compare` end to end on the bundled model: leaderboard, winner, and resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from lmtune.cli.main import main
from tests.conftest import REPO, lmtune_command

pytestmark = pytest.mark.integration


def _args(sst2_slice, root):
    return [str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
            f"data.validation={sst2_slice['dev']}", "data.max_eval_samples=80", "train.epochs=1",
            "train.batch_size=16", "train.eval_every=5", f"output={root}/run", "--out", str(root / "cmp"),
            "--strategies", "head,bitfit,lora"]


def _trial_states(root):
    import optuna

    study = optuna.load_study(study_name="lmtune-compare", storage=f"sqlite:///{root / 'cmp' / 'study.db'}")
    return {t.user_attrs.get("key"): t.state.name for t in study.get_trials()}


def test_compare_resumes_after_kill_and_names_a_winner(sst2_slice, tmp_path, capsys, caplog):
    proc = subprocess.Popen(lmtune_command("compare", *_args(sst2_slice, tmp_path)), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    second = tmp_path / "cmp" / "trials" / "bitfit-v0-s42" / "checkpoints"
    while not (second.is_dir() and any(p.name.startswith("step-") for p in second.iterdir())):
        assert proc.poll() is None, "compare ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = _trial_states(tmp_path)
    assert states["head-v0-s42"] == "COMPLETE" and states["bitfit-v0-s42"] == "RUNNING"
    first_model = tmp_path / "cmp" / "trials" / "head-v0-s42" / "model" / "config.json"
    stamp = first_model.stat().st_mtime_ns

    caplog.set_level("INFO", logger="lmtune")
    assert main(["compare", *_args(sst2_slice, tmp_path)]) == 0
    out = capsys.readouterr()
    assert "resumed from step-" in caplog.text  # the killed trial continued from its checkpoint
    assert first_model.stat().st_mtime_ns == stamp  # the finished trial was not run again
    states = _trial_states(tmp_path)
    assert states["head-v0-s42"] == "COMPLETE" and states["bitfit-v0-s42"] == "COMPLETE"
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    rows = {r["strategy"]: r for r in board["rows"]}
    assert set(rows) == {"head", "bitfit", "lora"}
    # a pruned trial shows as pruned on the board, a complete one with its mean
    assert (states["lora-v0-s42"] == "PRUNED") == rows["lora"]["status"].startswith("pruned at step")
    assert board["winner"] == _winner_by_the_stated_rule(board["rows"], noise_floor=0.005)
    assert "max(std_best + std, 0.005)" in board["rule"] and "fewest trainable parameters" in board["rule"]
    assert (tmp_path / "cmp" / "leaderboard.csv").read_text().startswith("strategy,status,mean,std")
    assert "winner:" in out.out
    winner = tmp_path / "cmp" / "winner"
    texts = tmp_path / "texts.txt"
    texts.write_text("a wonderful film .\n")
    assert main(["predict", str(winner), "--input", str(texts)]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in (0, 1)
    assert main(["eval", str(winner), "--data", str(sst2_slice["dev"]), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


def _winner_by_the_stated_rule(rows: list[dict], noise_floor: float) -> str:
    """The README's rule, written again here: the cheapest strategy within noise of the best mean."""
    done = [r for r in rows if r["mean"] is not None]
    best = max(done, key=lambda r: r["mean"])
    close = [r for r in done if best["mean"] - r["mean"] <= max(best["std"] + r["std"], noise_floor)]
    return min(close, key=lambda r: (r["trainable_parameters"], r["wall_seconds"]))["strategy"]
