"""The report files beside a result: report.md (with its plots) and report.html, from one latent view and
one drawing of the plots."""

from __future__ import annotations

from pathlib import Path

from saehealth.latents.view import DEFAULT_CARDS, load_view
from saehealth.report.html import render_report_html, write_report_html
from saehealth.report.markdown import write_markdown_report
from saehealth.report.plots import plot_images
from saehealth.result import EvalResult


def write_reports(
    result: EvalResult,
    details: dict | None,
    folder: Path,
    *,
    html_latents: int = DEFAULT_CARDS,
    source: Path | None = None,
    shown: Path | None = None,
) -> tuple[Path, Path]:
    """Write report.md (+ plots/) and report.html into `folder`; (markdown path, html path).
    `html_latents`: latents with full cards in report.html; `source`: the result's own folder, where its
    latents file is, when the reports go elsewhere (`saehealth report --out`); `shown`: the result folder as the
    reader will find it (`folder` may be a staging folder), named in the `saehealth latents` hint."""
    details = details or {}
    view = load_view(result, source or folder, details, cards=html_latents)
    images = plot_images(result, details)
    markdown = write_markdown_report(result, details, folder, view, images)
    html = render_report_html(result, details, view, images, folder_hint=str(shown or source or folder))
    return markdown, write_report_html(folder, html)
