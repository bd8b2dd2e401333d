"""Views of a comparison (`saehealth compare`): the rich side-by-side table, and `comparison.md` with two
frontier plots (L0 vs loss recovered, L0 vs explained variance) drawn on matplotlib's Agg canvas.

Every file is written to a temporary name and renamed into place, the markdown last, so a reader never
sees a half-written comparison.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.figure import Figure
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from saehealth.compare import (
    SUMMARY_KEYS,
    Comparison,
    frontier_groups,
    frontier_names,
    healthy_count,
    pareto_front,
)
from saehealth.report.plots import DPI, GREEN, GREY, _figure
from saehealth.report.text import STATUS_EMOJI, STATUS_STYLE, format_value, verdicts_of
from saehealth.result import _atomic_write

COMPARISON_MD = "comparison.md"
# y metric -> (file name, title)
FRONTIERS = {
    "loss_recovered": ("frontier_l0_loss_recovered.png", "L0 vs loss recovered"),
    "explained_variance": ("frontier_l0_explained_variance.png", "L0 vs explained variance"),
}
HEADERS = {
    "l0": "L0",
    "loss_recovered": "loss recovered",
    "delta_ce": "ΔCE",
    "kl_div_score": "KL score",
    "explained_variance": "explained var.",
    "dead_fraction": "dead",
    "absorption_fraction": "absorption",
}
# The terminal is narrower than a markdown page: numeric headers on two lines.
SHORT_HEADERS = {
    "l0": "L0",
    "loss_recovered": "loss\nrec.",
    "delta_ce": "ΔCE",
    "kl_div_score": "KL\nscore",
    "explained_variance": "expl.\nvar.",
    "dead_fraction": "dead",
    "absorption_fraction": "absorp-\ntion",
}
AXIS_LABELS = {"l0": "L0 (latents active per token)", **{k: v for k, v in HEADERS.items() if k != "l0"}}
FRONTIER_MARK = "★"
REUSED_MARK = "↺"
# One colour and marker per library, in order of first appearance.
PALETTE = ["#3a6ea5", "#d64541", "#2e9e5b", "#e3a21a", "#8e44ad", "#16a2b8", "#7f5539", "#555555"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ---------------------------------------------------------------------------------------------- terminal
def print_comparison(comparison: Comparison, console: Console, *, quiet: bool = False) -> None:
    """The side-by-side table, the shared settings and where the files are; one line per SAE when quiet."""
    if quiet:
        for entry in comparison.entries:
            healthy, total = healthy_count(entry.result)
            console.print(f"{entry.name}: {healthy}/{total} healthy", highlight=False)
        return
    console.print(comparison_table(comparison))
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    files = comparison.files
    console.print(
        f"Comparison: {files.get('markdown', comparison.out / COMPARISON_MD)}  JSON: {files.get('json')}\n"
        f"Per-SAE results and reports: {comparison.out}/<name>/",
        highlight=False,
    )


def comparison_table(comparison: Comparison) -> Table:
    """A rich table: one row per SAE, the headline numbers coloured by their verdicts."""
    s = comparison.settings
    table = Table(
        title=f"{len(comparison.entries)} SAEs on {s['model']} · {s['dataset']} ({s['split']}) · "
        f"{s['n_tokens']:,} tokens ({s['tokens_scored']:,} scored), context {s['context_length']}"
        + (" · same tokens for all" if comparison.identical_tokens else " · NOT the same tokens"),
        caption=_caption(comparison),
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    show_hook = len(comparison.hooks) > 1
    table.add_column("SAE", overflow="fold", min_width=10)
    table.add_column("library", overflow="fold", min_width=8)
    table.add_column("architec-\nture", overflow="fold", min_width=8)
    if show_hook:
        table.add_column("hook", overflow="fold", min_width=8)
    table.add_column("d_sae", justify="right", no_wrap=True)
    for key in SUMMARY_KEYS:
        table.add_column(SHORT_HEADERS[key], justify="right", no_wrap=True)
    table.add_column("healthy", justify="right", no_wrap=True)
    front = set(frontier_names(comparison))
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        marks = (f" {FRONTIER_MARK}" if entry.name in front else "") + (f" {REUSED_MARK}" if entry.reused else "")
        row = [Text(entry.name + marks), r.sae.source_library, r.sae.architecture]
        if show_hook:
            row.append(_short_hook(r.sae.where))
        row.append(f"{r.sae.d_sae:,}")
        for key in SUMMARY_KEYS:
            status = verdicts.get(key, {}).get("status")
            row.append(Text(_short(key, r.metrics.get(key)), style=STATUS_STYLE.get(status, "")))
        healthy, total = healthy_count(r)
        row.append(Text(f"{healthy}/{total}", style="green" if healthy == total else "yellow"))
        table.add_row(*row)
    return table


# ---------------------------------------------------------------------------------------------- files
def write_comparison_report(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Write the frontier PNGs, `comparison.md` and `comparison.html` into `out`;
    {"markdown": path, "html": path, "frontier_<y metric>": png path}."""
    from saehealth.report.html import render_comparison_html, write_comparison_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for y_key, (file_name, _) in FRONTIERS.items():
        path = out / file_name
        fig = frontier_figure(comparison, y_key)
        if fig is None:
            path.unlink(missing_ok=True)  # a stale plot of an earlier comparison must not linger
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        images[y_key] = buffer.getvalue()
        _atomic_write(path, lambda tmp, png=images[y_key]: Path(tmp).write_bytes(png))
        files[f"frontier_{y_key}"] = path
    markdown = render_comparison_markdown(comparison, {k: p.name for k, p in files.items()})
    path = out / COMPARISON_MD
    _atomic_write(path, lambda tmp: Path(tmp).write_text(markdown))
    files["markdown"] = path
    files["html"] = write_comparison_html(out, render_comparison_html(comparison, images))
    return files


def render_comparison_markdown(comparison: Comparison, plots: dict[str, str] | None = None) -> str:
    """comparison.md: shared settings, the table with links to each SAE's report, frontier plots, notes."""
    plots = plots or {}
    s = comparison.settings
    lines = [
        "# SAE comparison",
        "",
        f"{len(comparison.entries)} SAEs on `{s['model']}` · `{s['dataset']}` ({s['split']}) · "
        f"{s['n_tokens']:,} tokens ({s['tokens_scored']:,} scored) in sequences of {s['context_length']} · "
        f"seed {s['seed']} · thresholds: {s['thresholds']}.",
        "",
        "Every SAE was evaluated on the same tokens: one shared pass per hook (clean and zero-ablated runs "
        "computed once, each SAE spliced in on its own)."
        if comparison.identical_tokens
        else "**Not every SAE was evaluated on the same tokens** (a saved result was reused): re-run with --force.",
        "",
    ]
    show_hook = len(comparison.hooks) > 1
    header = ["SAE", "library", "architecture", *(["hook"] if show_hook else []), "d_sae"]
    header += [HEADERS[k] for k in SUMMARY_KEYS] + ["health"]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---"] * show_hook + ["--:"] * (len(header) - 3 - show_hook)) + "|",
    ]
    front = set(frontier_names(comparison))
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        name = f"[{_cell(entry.name)}]({entry.name}/report.md)" + (f" {FRONTIER_MARK}" if entry.name in front else "")
        cells = [name, _cell(r.sae.source_library), _cell(r.sae.architecture)]
        if show_hook:
            cells.append(f"`{r.sae.where}`")
        cells.append(f"{r.sae.d_sae:,}")
        for key in SUMMARY_KEYS:
            status = verdicts.get(key, {}).get("status")
            value = _short(key, r.metrics.get(key))
            cells.append(f"{STATUS_EMOJI[status]} {value}" if status in STATUS_EMOJI else value)
        healthy, total = healthy_count(r)
        cells.append(f"{healthy}/{total} healthy")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{FRONTIER_MARK}: on the L0 vs loss recovered frontier{_per_hook(comparison)} (no other SAE"
        f"{' at that hook' if len(comparison.hooks) > 1 else ''} has both a lower L0 and a higher loss recovered). "
        "Marks: ✅ healthy, ⚠️ borderline, ❌ unhealthy, ❔ not measured. Each name links to that SAE's full report. "
        "In the plots, error bars are one standard error and green shading marks each metric's healthy band "
        "(darker where both are).",
        "",
        "## Frontiers",
        "",
    ]
    for y_key, (file_name, title) in FRONTIERS.items():
        names = frontier_names(comparison, y_key)
        lines += [f"### {title}", ""]
        if f"frontier_{y_key}" in plots:
            lines += [f"![{title}]({file_name})", ""]
        lines += [
            f"On the frontier: {', '.join(names)}." if names else "No SAE has both metrics measured.",
            "",
        ]
    if comparison.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in comparison.notes], ""]
    return "\n".join(lines)


def frontier_figure(comparison: Comparison, y_key: str) -> Figure | None:
    """L0 (x) against `y_key`, one point per SAE labelled with its name, a colour and marker per library,
    standard errors as error bars, the frontier as a dashed line, the healthy bands of both metrics shaded.
    None without two numbers."""
    points, errors, names, libraries = [], [], [], []
    for entry in comparison.entries:
        x, y = entry.result.metrics.get("l0"), entry.result.metrics.get(y_key)
        if x is None or y is None:
            continue
        points.append((float(x), float(y)))
        errors.append((entry.result.uncertainty.get("l0", 0.0), entry.result.uncertainty.get(y_key, 0.0)))
        names.append(entry.name)
        libraries.append(entry.result.sae.source_library)
    if not points:
        return None
    fig, ax = _figure(7.5, 4.6)
    xs = [p[0] for p in points]
    positive = [x for x in xs if x > 0]
    if positive and len(positive) == len(xs) and max(xs) / min(positive) > 20:
        ax.set_xscale("log")
    order = list(dict.fromkeys(libraries))
    for k, library in enumerate(order):
        chosen = [i for i, lib in enumerate(libraries) if lib == library]
        ax.errorbar(
            [points[i][0] for i in chosen],
            [points[i][1] for i in chosen],
            xerr=[errors[i][0] for i in chosen],
            yerr=[errors[i][1] for i in chosen],
            fmt="none",
            ecolor=PALETTE[k % len(PALETTE)],
            elinewidth=1,
            capsize=2,
            zorder=3,
        )
        ax.scatter(
            [points[i][0] for i in chosen],
            [points[i][1] for i in chosen],
            color=PALETTE[k % len(PALETTE)],
            marker=MARKERS[k % len(MARKERS)],
            s=46,
            zorder=3,
            label=library,
        )
    for (x, y), name in zip(points, names, strict=True):
        ax.annotate(name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8, zorder=4)
    for k, group in enumerate(frontier_groups(comparison, y_key).values()):
        front = [group[i][1] for i in pareto_front([point for _, point in group])]
        if len(front) > 1:  # one dashed line per hook: SAEs at different hooks are not on one frontier
            label = "frontier" + (" (per hook)" if len(comparison.hooks) > 1 else "") if k == 0 else None
            ax.plot([x for x, _ in front], [y for _, y in front], "--", color=GREY, lw=1, zorder=2, label=label)
    ax.margins(x=0.18, y=0.12)  # room for the labels right of the points
    _shade_bands(ax, comparison, y_key)
    ax.set_xlabel(AXIS_LABELS["l0"])
    ax.set_ylabel(AXIS_LABELS[y_key])
    s = comparison.settings
    ax.set_title(f"{FRONTIERS[y_key][1]}: {len(points)} SAEs, {s['tokens_scored']:,} tokens scored", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.25)
    return fig


def _shade_bands(ax, comparison: Comparison, y_key: str) -> None:
    """Light green where each axis' metric is healthy (bands from the first result's verdicts), inside the
    limits the points set: a band far from every point must not stretch the axes."""
    verdicts = verdicts_of(comparison.entries[0].result)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    for key, span, limits in (("l0", ax.axvspan, xlim), (y_key, ax.axhspan, ylim)):
        lo, hi = (verdicts.get(key, {}).get("healthy_range") or [None, None])[:2]
        if lo is None and hi is None:
            continue
        lo = limits[0] if lo is None else max(lo, limits[0])
        hi = limits[1] if hi is None else min(hi, limits[1])
        if lo < hi:
            span(lo, hi, color=GREEN, alpha=0.1, lw=0, zorder=0)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def _caption(comparison: Comparison) -> str:
    parts = []
    if len(comparison.entries) > 1:
        parts.append(f"{FRONTIER_MARK} on the L0 vs loss recovered frontier" + _per_hook(comparison))
    if any(entry.reused for entry in comparison.entries):
        parts.append(f"{REUSED_MARK} saved result reused")
    parts.append(f"colours: verdicts under the {comparison.settings['thresholds']} thresholds")
    return "   ".join(parts)


def _per_hook(comparison: Comparison) -> str:
    return " of its hook" if len(comparison.hooks) > 1 else ""


def _short_hook(hook: str) -> str:
    """'blocks.0.hook_resid_post' -> '0.resid_post': the terminal table is wide enough without the rest."""
    return hook.removeprefix("blocks.").replace("hook_", "")


def _short(key: str, value) -> str:
    """Compact table cell: '—' when not measured, else the report's formatting without uncertainty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format_value(key, value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


__all__ = [
    "COMPARISON_MD",
    "FRONTIERS",
    "comparison_table",
    "frontier_figure",
    "print_comparison",
    "render_comparison_markdown",
    "write_comparison_report",
]
