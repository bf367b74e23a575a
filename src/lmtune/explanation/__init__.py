"""Why does the model say this? Attention maps and rollout, token attributions, and checks on both."""

from lmtune.explanation.core import Explainer, Explanation
from lmtune.explanation.files import explain_run, summary

__all__ = ["Explainer", "Explanation", "explain_run", "summary"]
