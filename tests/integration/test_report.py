"""`lmtune diagnose` and `lmtune report` on a real run; the report rendered by headless Chromium."""

from __future__ import annotations

import json
import re

from lmtune.cli.main import main
from lmtune.diagnosis.findings import STATES
from tests.conftest import rendered_dom


def test_train_leaves_a_diagnosis_and_diagnose_prints_it(trained_run, capsys):
    run, _ = trained_run
    saved = json.loads((run / "diagnosis.json").read_text())
    assert saved["state"] in STATES
    assert main(["diagnose", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["state"] == saved["state"] and printed["findings"][0]["evidence"]
    assert main(["diagnose", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"diagnosis of {run}: ")


def test_report_is_self_contained_and_renders_in_a_real_browser(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    html = out.read_text()
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=", html), "the report must not load anything"
    for section in ("Learning curves", "Diagnosis", "Confusion matrix", "Worst-predicted validation examples",
                    "Strategy comparison", "Explanations", "Resolved config"):
        assert section in html
    assert 'class="lmx"' in html  # sampled validation predictions are explained
    dom = rendered_dom(out, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    charts = int(re.search(r'data-charts="(\d+)"', body).group(1))
    assert charts >= 2 and f'data-charts-drawn="{charts}"' in body, body  # every chart laid out with its lines
    assert dom.count('class="lmx" id=') == dom.count('data-ready="1"') >= 2  # explanation views built
    assert dom.count('class="series"') >= 4  # loss: running, sample, validation; metric: sample, validation
