"""Reports a person reads: a self-contained HTML page for a generation trace or an evaluation directory."""

from adafuse.report.html import build_report, eval_report, result_report, write_report

__all__ = ["build_report", "eval_report", "result_report", "write_report"]
