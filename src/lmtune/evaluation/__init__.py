"""Evaluation and prediction over encoded examples: one loop for every task."""

from lmtune.evaluation.evaluate import evaluate_examples, predict_examples, score_examples

__all__ = ["evaluate_examples", "predict_examples", "score_examples"]
