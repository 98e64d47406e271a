"""The run report: one self-contained HTML page of a run folder's tables, maps, curves and counterfactuals."""

from screenxai.report.builder import build_report
from screenxai.report.run_data import ReportError, load_run

__all__ = ["ReportError", "build_report", "load_run"]
