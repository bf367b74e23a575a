"""Runs that train other runs: `lmtune compare` (a trial is a run with overrides; Optuna schedules, prunes and
stores them) and the data curve (the same run on growing fractions of its data)."""

from lmtune.comparison.compare import compare
from lmtune.comparison.data_curve import data_curve

__all__ = ["compare", "data_curve"]
