"""Is the run healthy, overfitting, underfitting, diverging, or is the data the problem? And what next."""

from lmtune.diagnosis.diagnose import DIAGNOSIS, diagnose
from lmtune.diagnosis.findings import Diagnosis, Finding, Suggestion

__all__ = ["DIAGNOSIS", "Diagnosis", "Finding", "Suggestion", "diagnose"]
