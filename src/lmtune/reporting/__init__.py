"""The run report: one self-contained HTML file of curves, diagnosis, classes and examples."""

from lmtune.reporting.build import REPORT, SECTIONS, write_report

__all__ = ["REPORT", "SECTIONS", "write_report"]
