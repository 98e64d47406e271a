"""The run report: one self-contained HTML page of a run folder's tables, maps, curves and counterfactuals."""

__all__ = ["ReportError", "build_report", "load_run"]


def __getattr__(name: str):
    """``build_report``, ``load_run`` and ``ReportError``, imported on first use: a process that only draws figures
    (``figures.render``) then imports matplotlib, not the statistics behind the builder."""
    if name == "build_report":
        from screenxai.report.builder import build_report

        return build_report
    if name in ("ReportError", "load_run"):
        from screenxai.report import run_data

        return getattr(run_data, name)
    raise AttributeError(f"module 'screenxai.report' has no attribute {name!r}")
