"""Strategy comparison: a trial is a run with overrides; Optuna schedules, prunes and stores them."""

from lmtune.selection.compare import compare

__all__ = ["compare"]
