"""Health reports of an evaluation result: rich terminal report, markdown report with PNG plots."""

from saehealth.report.markdown import render_markdown, write_markdown_report
from saehealth.report.terminal import print_report, print_thresholds, verdict_line

__all__ = ["print_report", "print_thresholds", "render_markdown", "verdict_line", "write_markdown_report"]
