"""Reports: one self-contained HTML page and its Markdown twin from evaluation results
(summary table, box plots, overlays of example pairs, statistics) and training runs
(loss and uncertainty-weight curves). See :func:`build_report`."""

from ddmr.report.build import ReportOptions, ResultsSection, build_report
from ddmr.report.figures import CONVENTION

__all__ = ["CONVENTION", "ReportOptions", "ResultsSection", "build_report"]
