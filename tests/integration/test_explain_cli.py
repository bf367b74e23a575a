"""`lmtune explain` on a model fine-tuned on an SST-2 slice: outputs, checks, and the page in a browser."""

from __future__ import annotations

import json

from lmtune.cli.main import main
from tests.conftest import SST2, read_tsv, rendered_dom, shared, write_tsv


def test_explain_writes_pictures_scores_and_an_interactive_page(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "explain"
    assert main(["explain", str(run), "--text", "a gripping , unbelievably moving film", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["predicted"] in (0, 1) and len(lines[0]["top_words"]) == 3
    for suffix in ("attention-heads", "attention-layers", "attributions"):
        assert (out / f"ex-001-{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    [scores] = json.loads((out / "explain.json").read_text())
    seq = len(scores["tokens"])
    assert len(scores["attention"]) == 6 and len(scores["attention"][0]) == 12 and len(scores["attention"][0][0]) == seq
    assert "unbelievably" in scores["words"]
    assert abs(scores["attributions"]["ig"]["convergence_delta"]) < 0.05
    assert set(scores["randomization"]) == {"ig", "gradxinput", "occlusion"} and scores["base_model"]
    dom = rendered_dom(out / "explain.html", tmp_path)
    assert 'data-ready="1"' in dom and dom.count("lmx-tok") > seq  # tokens and attribution highlights built


def test_integrated_gradients_deletes_better_than_random_on_dev_sentences(trained_run, tmp_path, capsys):
    """The deletion test over 16 dev sentences: attribution-ranked deletion must lower the predicted
    class probability faster than random deletion, on average (benchmarks/explain_deletion.py: 46 of 50
    sentences, areas 0.46 against 0.81)."""
    run, _ = trained_run
    rows = read_tsv(shared(SST2) / "dev.tsv")[200:216]
    inputs = write_tsv(tmp_path / "inputs.tsv", rows, ["sentence", "label"])
    assert main(["explain", str(run), "--input", str(inputs), "--method", "ig", "--no-png", "--no-base",
                 "--steps", "16", "--out", str(tmp_path / "x")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"]["ig"]
    assert summary["inputs"] == 16
    assert summary["deletion_area_attribution"] < summary["deletion_area_random"], summary
