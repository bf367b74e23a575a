"""`lmtune diagnose` and `lmtune report` on a real run; the report rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from lmtune.cli.main import main
from lmtune.diagnosis.findings import STATES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


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
    if CHROMIUM is None:
        if os.environ.get("LMTUNE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (CI installs it with apt-get install chromium)")
        pytest.skip("chromium not installed")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-charts="2"' in body and 'data-charts-drawn="2"' in body, body  # both charts laid out with lines
    assert "data-error" not in re.search(r"<html[^>]*>", dom).group(0)  # no script error on the page
    assert dom.count('class="series"') >= 4  # loss: running, sample, validation; metric: sample, validation
