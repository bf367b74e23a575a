"""The layers of README's 'Layers' import one way, with no exception listed; config is a leaf."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from lmtune.config.schema import STRATEGY_KNOBS
from lmtune.strategies import STRATEGIES, knobs_of
from tests.conftest import REPO


def test_layers_import_one_way_with_no_exceptions():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [c["type"] for c in contracts] == ["layers"]
    assert "ignore_imports" not in contracts[0] and contracts[0]["exhaustive"] is True
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
                             " sys.exit(lint_imports_command())", "--no-cache"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_the_config_leaf_knows_every_strategy_knob():
    """StrategyConfig (in the leaf) holds the settings; each strategy class owns which of them it takes."""
    taken = {knob for name in STRATEGIES.names() for knob in knobs_of(name)}
    assert taken == set(STRATEGY_KNOBS)


def test_the_documentation_site_builds_strictly(tmp_path):
    """mkdocs --strict: a broken link, a page missing from the nav or a bad file is an error."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "guide" / "config" / "index.html").is_file()
