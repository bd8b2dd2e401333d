"""`report.md` plus PNG plots in the result folder: a self-contained folder (relative image links) to
paste into a pull request. Everything is written to a hidden temporary folder first and moved into place,
so a reader never sees a half-written report."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from saehealth.advice import advise
from saehealth.report.definitions import markdown_definitions
from saehealth.report.plots import PLOTS, make_plots
from saehealth.report.routing import routing_markdown
from saehealth.report.text import (
    SEVERITY_MARK,
    STATUS_EMOJI,
    dead_bound_sentence,
    header_facts,
    label,
    measurement_rows,
    overall_status,
    standard_text,
    status_text,
    value_with_context,
)
from saehealth.result import EvalResult
from saehealth.verdicts import headline_summary, verdicts_of

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


def write_markdown_report(
    result: EvalResult, details: dict | None, out_dir: Path, latents=None, images: dict[str, bytes] | None = None
) -> Path:
    """Write `out_dir/report.md` and `out_dir/plots/*.png`; return the report's path. `latents` (a
    `LatentView`) adds the "Latents to look at" section; `images` are the plots already drawn
    (`plots.plot_images`), else they are drawn here."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".report-"))
    try:
        plots = make_plots(result, details or {}, staging / PLOTS_DIR, images)
        (staging / REPORT_FILE).write_text(render_markdown(result, details, plots, latents))
        # Swap the plots folder whole (stale plots of an earlier run must not linger), then the report.
        old = out_dir / PLOTS_DIR
        if old.exists():
            os.replace(old, staging / "old-plots")
        os.replace(staging / PLOTS_DIR, old)
        os.replace(staging / REPORT_FILE, out_dir / REPORT_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / REPORT_FILE


def _cell(text: str) -> str:
    """Make text safe inside a markdown table cell: no column break, no line break, no raw HTML."""
    return _plain(text).replace("|", "\\|")


def render_markdown(
    result: EvalResult, details: dict | None, plots: dict[str, Path] | None = None, latents=None
) -> str:
    """The report's markdown; `plots` maps plot names to files in the plots folder, `latents` (a
    `LatentView`) adds "Latents to look at"."""
    verdicts = verdicts_of(result)
    name = Path(result.sae.path).name or result.sae.path
    lines = [f"# SAE health report: {_plain(name)}", ""]
    for fact, value in header_facts(result):  # paths and names come from the user's files: escaped
        lines.append(f"- **{fact}**: {_code(value) if fact in ('SAE',) else _plain(value)}")
    lines += ["", "## Health assessment", ""]
    lines += _verdict_table(result, {k: v for k, v in verdicts.items() if v.get("headline")})
    mark = STATUS_EMOJI[overall_status(verdicts)]
    lines += [
        "",
        f"### Overall assessment: {headline_summary(verdicts)} {mark}",
        "",
        f"*{dead_bound_sentence(result)}*",
        "",
    ]

    secondary = {k: v for k, v in verdicts.items() if not v.get("headline")}
    if secondary:
        lines += ["### Secondary checks", ""]
        lines += _verdict_table(result, secondary)
        lines.append("")

    lines += routing_markdown(result.routing)  # routed SAEs only
    lines += ["## Findings and recommendations", ""]
    for i, finding in enumerate(advise(result, details), 1):
        lines.append(f"### {i}. {SEVERITY_MARK[finding.severity]} {finding.title} ({finding.severity})")
        lines += ["", finding.detail, ""]
        if finding.recommendation:
            lines += [f"**Recommendation:** {finding.recommendation}", ""]

    if plots:
        lines += ["## Plots", ""]
        for key, path in plots.items():
            caption = PLOTS[key][1]
            lines += [f"**{caption}**", "", f"![{caption}]({PLOTS_DIR}/{path.name})", ""]

    from saehealth.report.diagnostics_report import diagnostics_tables

    tables = diagnostics_tables(result)
    if tables:
        lines += ["## Diagnostics beyond the averages", ""]
        for title, header, rows in tables:
            lines += [f"**{title}**", "", "| " + " | ".join(map(_cell, header)) + " |"]
            lines += ["| " + " | ".join("---" for _ in header) + " |"]
            lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows] + [""]

    if latents is not None:
        from saehealth.report.latents_markdown import latents_section

        lines += latents_section(latents)

    lines += ["## All measurements", "", "| Metric | Value | Note |", "| --- | ---: | --- |"]
    for key, value, note in measurement_rows(result, verdicts):
        lines.append(f"| `{key}` | {value} | {_cell(note)} |")
    lines.append("")

    if result.notes:
        lines += ["## Notes", ""] + [f"- {_cell(note)}" for note in result.notes] + [""]
    lines += _provenance(result)
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """`text` as a code span that it cannot end early: fenced by more backticks than it holds in a row. Text
    holding `<` is shown as plain text instead (a code span shows an entity as it is spelt), so that no `<script`
    appears raw in the file whatever reads it."""
    text = _one_line(text)
    if "<" in text:
        return _plain(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def _plain(text: str) -> str:
    """Text from the user's files (a folder name, a path, a note) on one line, with `<` as an HTML entity (it
    alone opens a tag or a comment; an entity spelt out only shows as text): a name holding `<script>` is shown,
    never run, by a markdown viewer that renders inline HTML."""
    return _one_line(text).replace("<", "&lt;")


def _verdict_table(result: EvalResult, verdicts: dict) -> list[str]:
    rows = ["| Metric | Value | Standard | Status |", "| --- | ---: | --- | --- |"]
    for key, v in verdicts.items():
        rows.append(
            f"| **{label(key)}** | {_cell(value_with_context(result, key, v))} | {_cell(standard_text(v))} | "
            f"{STATUS_EMOJI[v['status']]} {_cell(status_text(v))} |"
        )
    return rows


def _provenance(result: EvalResult) -> list[str]:
    p, ev = result.provenance, result.eval
    lines = [
        "## Provenance",
        "",
        f"saehealth {p.saehealth}, sae-lens {p.sae_lens}, transformer-lens {p.transformer_lens}, torch {p.torch}; "
        f"{p.device}, {p.dtype}; started {p.started_at}, took {p.duration_s:.1f} s; seed {ev.seed}, batch size {ev.batch_size}.",
    ]
    if result.timing:
        lines.append("")
        lines.append(
            "Timing: "
            + ", ".join(f"{k} {v:,.0f}" if v >= 100 else f"{k} {v:.3g}" for k, v in result.timing.items())
            + "."
        )
    lines.append("")
    lines.append(
        "Regenerate with `saehealth report <folder>/result.json`; what each number means: the metric definitions "
        'below (the same table as "In every report" in saehealth\'s docs/metrics.md).'
    )
    lines += ["", "<details><summary>Metric definitions</summary>", "", *markdown_definitions(), "", "</details>"]
    return lines
