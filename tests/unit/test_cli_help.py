"""`lmtune --version` and `lmtune --help` say what the command is today."""

from __future__ import annotations

import pytest

import lmtune
from lmtune.cli.main import EPILOG, build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmtune {lmtune.__version__}"


def test_help_names_every_command_by_its_job():
    commands = build_parser()._subparsers._group_actions[0].choices  # argparse has no public accessor
    named = {word.strip(",()") for line in EPILOG.splitlines() for word in line.split()}
    assert set(commands) <= named, set(commands) - named
    for name, sub in commands.items():
        assert sub.format_help().startswith(f"usage: lmtune {name}"), name
