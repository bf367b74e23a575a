"""Evaluation and prediction over encoded examples."""

from lmtune.evaluation.evaluate import evaluate_examples, forward_all

__all__ = ["evaluate_examples", "forward_all"]
