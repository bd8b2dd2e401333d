"""Views of several results side by side, for `saehealth compare` and for an eval of a run folder: a markdown
report with plots (report/compare_plots.py) and its HTML page; the terminal table is report/compare_terminal.py.

A comparison (`comparison.md`) shows SAEs of a sweep or of several libraries with their L0 frontiers; a run
(`run_report.md`) shows one SAE per hook of a model, ordered by layer, with its metrics plotted against layer.
Every file is written to a temporary name and renamed into place, the markdown last, so a reader never sees a
half-written report.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from saehealth.comparison import (
    Comparison,
    frontier_names,
    healthy_count,
    layer_and_kind,
    shares_a_hook,
    training_tokens,
)
from saehealth.output import atomic_write
from saehealth.report.compare_differences import (
    DIFFERENCES_PLOT,
    differences_figure,
    differences_markdown,
    replace_all_markdown,
)
from saehealth.report.compare_plots import FRONTIERS, LAYER_PLOT, SAE_PLOT, frontier_figure, run_figures
from saehealth.report.plots import DPI
from saehealth.report.text import (
    STATUS_EMOJI,
    absorption_column_estimator,
    comparison_header,
    format_value,
)
from saehealth.report.trajectory_plot import TRAJECTORY_PLOT, trajectory_figure
from saehealth.verdicts import verdicts_of

REPORT_MD = {"comparison": "comparison.md", "run": "run_report.md", "trajectory": "trajectory_report.md"}
REPORT_HTML = {"comparison": "comparison.html", "run": "run_report.html", "trajectory": "trajectory_report.html"}
COMPARISON_MD = REPORT_MD["comparison"]
FRONTIER_MARK = "★"
REUSED_MARK = "↺"


# ---------------------------------------------------------------------------------------------- files
def write_comparison_report(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Write the plots, the markdown report and its HTML page into `out`;
    {"markdown": path, "html": path, plot name: png path}."""
    from saehealth.report.html import render_comparison_html, write_comparison_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if comparison.view == "comparison":
        for y_key, (file_name, _) in FRONTIERS.items():
            figures[f"frontier_{y_key}"] = (file_name, frontier_figure(comparison, y_key))
    elif comparison.view == "trajectory":
        figures["trajectory"] = (TRAJECTORY_PLOT[0], _trajectory_figure(comparison))
    else:
        figures = run_figures(comparison)
    figures["differences"] = (DIFFERENCES_PLOT[0], differences_figure(comparison.differences))
    files: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for key, (file_name, fig) in figures.items():
        path = out / file_name
        if fig is None:
            path.unlink(missing_ok=True)  # a stale plot of an earlier comparison must not linger
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        images[key] = buffer.getvalue()
        atomic_write(path, lambda tmp, png=images[key]: Path(tmp).write_bytes(png))
        files[key] = path
    markdown = render_comparison_markdown(comparison, {k: p.name for k, p in files.items()})
    path = out / REPORT_MD[comparison.view]
    atomic_write(path, lambda tmp: Path(tmp).write_text(markdown))
    files["markdown"] = path
    files["html"] = write_comparison_html(out, render_comparison_html(comparison, images), REPORT_HTML[comparison.view])
    return files


def render_comparison_markdown(comparison: Comparison, plots: dict[str, str] | None = None) -> str:
    """The markdown report: shared settings, the table with links to each SAE's report, plots, notes."""
    plots = plots or {}
    run = comparison.view == "run"
    lines = [
        "# SAE health of a run" if run else "# SAE comparison",
        "",
        _title(comparison, markdown=True) + ".",
        "",
        "Every SAE was evaluated on the same tokens, in one shared pass (one clean forward per batch, one zero "
        "ablation per hook, each SAE spliced in at its own hook)."
        if comparison.identical_tokens
        else "**Not every SAE was evaluated on the same tokens** (a saved result was reused): re-run with --force.",
        "",
    ]
    lines += _markdown_table(comparison)
    if comparison.view == "trajectory":
        lines[0] = "# SAE health over training"
        lines += [
            "",
            "The checkpoints of one training run, at one hook, ordered by the training tokens each had seen (its "
            "folder's name). Marks: ✅ healthy, ⚠️ borderline, ❌ unhealthy, ❔ not measured. Error bars: one "
            "standard error.",
            "",
            f"## {TRAJECTORY_PLOT[1]}",
            "",
        ]
        if "trajectory" in plots:
            lines += [f"![{TRAJECTORY_PLOT[1]}]({plots['trajectory']})", ""]
    elif run:
        lines += _run_sections(comparison, plots)
    else:
        lines += [
            "",
            f"{FRONTIER_MARK}: on the L0 vs loss recovered frontier{_per_hook(comparison)} (no other SAE"
            f"{' at that hook' if len(comparison.hooks) > 1 else ''} has both a lower L0 and a higher loss recovered). "
            "Marks: ✅ healthy, ⚠️ borderline, ❌ unhealthy, ❔ not measured. Each name links to that SAE's full "
            "report. In the plots, error bars are one standard error and green shading marks each metric's healthy "
            "band (darker where both are).",
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
    lines += replace_all_markdown(comparison.replace_all)
    lines += differences_markdown(comparison.differences)
    if "differences" in plots:
        lines += [f"![{DIFFERENCES_PLOT[1]}]({plots['differences']})", ""]
    if comparison.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in comparison.notes], ""]
    return "\n".join(lines)


def _run_sections(comparison: Comparison, plots: dict[str, str]) -> list[str]:
    """What follows a run's table: how it is ordered, then its plots (against layer, or per SAE and the L0
    frontiers when some hook holds several SAEs)."""
    shared = shares_a_hook(comparison.entries)
    lines = [
        "",
        "Ordered by depth (layer, then place in the block: resid_pre, attention, resid_mid, MLP, resid_post), SAEs "
        "at one hook by name."
        + (
            f" {FRONTIER_MARK}: on the L0 vs loss recovered frontier of its hook (no other SAE at that hook has both "
            "a lower L0 and a higher loss recovered)."
            if shared
            else ""
        )
        + " Marks: ✅ healthy, ⚠️ borderline, ❌ unhealthy, ❔ not measured. Each name links to that SAE's full "
        "report. In the plots, error bars are one standard error.",
        "",
    ]
    if not shared:
        lines += [f"## {LAYER_PLOT[1]}", ""]
        if "by_layer" in plots:
            return lines + [f"![{LAYER_PLOT[1]}]({plots['by_layer']})", ""]
        return lines + ["No SAE sits inside a block of the model: nothing to plot against layer.", ""]
    lines += [f"## {SAE_PLOT[1]}", ""]
    if "by_sae" in plots:
        lines += [f"![{SAE_PLOT[1]}]({plots['by_sae']})", ""]
    lines += ["## Frontiers of the SAEs that share a hook", ""]
    for y_key, (_, title) in FRONTIERS.items():
        names = frontier_names(comparison, y_key)
        lines += [f"### {title}", ""]
        if f"frontier_{y_key}" in plots:
            lines += [f"![{title}]({plots[f'frontier_{y_key}']})", ""]
        lines += [f"On the frontier: {', '.join(names)}." if names else "No SAE has both metrics measured.", ""]
    return lines


def _markdown_table(comparison: Comparison) -> list[str]:
    run = comparison.view == "run"
    show_hook = run or len(comparison.hooks) > 1
    header = ["SAE", *(["layer"] if run else ["library", "architecture"]), *(["hook"] if show_hook else []), "d_sae"]
    results = [entry.result for entry in comparison.entries]
    header += [comparison_header(key, results) for key in comparison.summary_keys] + ["health"]
    texts = len(header) - len(comparison.summary_keys) - 2  # left-aligned columns before d_sae
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * texts + ["--:"] * (len(header) - texts)) + "|",
    ]
    front = _front(comparison)
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        layer, kind = layer_and_kind(r)
        name = f"[{_cell(entry.name)}]({entry.name}/report.md)" + (f" {FRONTIER_MARK}" if entry.name in front else "")
        cells = [name, *([_layer(layer)] if run else [_cell(r.sae.source_library), _cell(r.sae.architecture)])]
        if show_hook:
            cells.append(f"`{kind}`" if run else f"`{r.sae.where}`")
        cells.append(f"{r.sae.d_sae:,}")
        for key in comparison.summary_keys:
            status = verdicts.get(key, {}).get("status")
            value = _short(key, r.metrics.get(key))
            cells.append(f"{STATUS_EMOJI[status]} {value}" if status in STATUS_EMOJI else value)
        healthy, total = healthy_count(r)
        cells.append(f"{healthy}/{total} healthy")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _trajectory_figure(comparison: Comparison):
    entries = comparison.entries
    tokens = [training_tokens(entry.name) for entry in entries]
    kept = [(t, e.result) for t, e in zip(tokens, entries, strict=True) if t is not None]
    if not kept:
        return None
    return trajectory_figure([t for t, _ in kept], [r.metrics for _, r in kept], [r.uncertainty for _, r in kept])


def _title(comparison: Comparison, markdown: bool = False) -> str:
    s = comparison.settings
    model, dataset = (f"`{s['model']}`", f"`{s['dataset']}`") if markdown else (s["model"], s["dataset"])
    text = (
        f"{len(comparison.entries)} SAEs on {model} · {dataset} ({s['split']}) · {s['n_tokens']:,} tokens "
        f"({s['tokens_scored']:,} scored) in sequences of {s['context_length']}"
    )
    if markdown:
        return text + f" · seed {s['seed']} · thresholds: {s['thresholds']}"
    return text + (" · same tokens for all" if comparison.identical_tokens else " · NOT the same tokens")


def _front(comparison: Comparison) -> set[str]:
    """The frontier marks: a comparison's; in a run, only among SAEs that share a hook (comparison.frontier_groups)."""
    return set(frontier_names(comparison))


def _caption(comparison: Comparison) -> str:
    parts = []
    if comparison.view == "comparison" and len(comparison.entries) > 1:
        parts.append(f"{FRONTIER_MARK} on the L0 vs loss recovered frontier" + _per_hook(comparison))
    elif comparison.view == "run" and shares_a_hook(comparison.entries):
        parts.append(f"{FRONTIER_MARK} on the L0 vs loss recovered frontier of its hook")
    if any(entry.reused for entry in comparison.entries):
        parts.append(f"{REUSED_MARK} saved result reused")
    if estimator := absorption_column_estimator([entry.result for entry in comparison.entries]):
        parts.append(f"absorption: {estimator}")
    parts.append(f"colours: verdicts under the {comparison.settings['thresholds']} thresholds")
    return "   ".join(parts)


def _per_hook(comparison: Comparison) -> str:
    return " of its hook" if len(comparison.hooks) > 1 else ""


def _layer(layer: int | None) -> str:
    return "—" if layer is None else str(layer)


def _short(key: str, value) -> str:
    """Compact table cell: '—' when not measured, else the report's formatting without uncertainty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format_value(key, value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


__all__ = ["COMPARISON_MD", "REPORT_MD", "render_comparison_markdown", "write_comparison_report"]
