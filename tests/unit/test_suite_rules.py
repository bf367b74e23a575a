"""The suite's own rules: a missing prerequisite fails where it is required (CI) and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared


def test_missing_shared_data_fails_where_required_and_skips_elsewhere(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-data"
    monkeypatch.setenv("LMTUNE_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match=f"shared data not found at {missing}"):
        shared(missing)
    monkeypatch.delenv("LMTUNE_REQUIRE_DATA")
    with pytest.raises(pytest.skip.Exception):
        shared(missing)
    assert shared(Path(__file__)) == Path(__file__)
