"""Plots of several results side by side, on matplotlib's Agg canvas: the L0 frontiers of a comparison, and the
metrics of a run folder's SAEs: against layer (one line per hook type) when each hook holds one SAE, one point per
SAE grouped by hook (plus the L0 frontiers of the shared hooks) when some hook holds several."""

from __future__ import annotations

import math
from dataclasses import replace

from matplotlib.figure import Figure

from saehealth.comparison import (
    Comparison,
    by_hook,
    frontier_groups,
    layer_and_kind,
    pareto_front,
    shares_a_hook,
    short_hook,
)
from saehealth.report.plots import GREEN, GREY, _figure
from saehealth.report.text import COMPARISON_HEADERS
from saehealth.report.text import label as metric_label
from saehealth.verdicts import verdicts_of

# y metric -> (file name, title)
FRONTIERS = {
    "loss_recovered": ("frontier_l0_loss_recovered.png", "L0 vs loss recovered"),
    "explained_variance": ("frontier_l0_explained_variance.png", "L0 vs explained variance"),
}
LAYER_PLOT = ("metrics_by_layer.png", "Metrics against layer, one line per hook type")
SAE_PLOT = ("metrics_by_sae.png", "Metrics of each SAE, grouped by hook")
# The plots of a run report: key -> (file name, title); the frontiers are added where a hook holds several SAEs.
RUN_PLOTS = {"by_layer": LAYER_PLOT, "by_sae": SAE_PLOT}
# The panels of the layer plot, in order.
LAYER_KEYS = (
    "loss_recovered",
    "delta_ce",
    "kl_div_score",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "absorption_fraction",
)
AXIS_LABELS = {**COMPARISON_HEADERS, "l0": "L0 (latents active per token)"}  # the table's words, L0 spelled out
# One colour and marker per library (or hook type), in order of first appearance.
PALETTE = ["#3a6ea5", "#d64541", "#2e9e5b", "#e3a21a", "#8e44ad", "#16a2b8", "#7f5539", "#555555"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


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


def layer_figure(comparison: Comparison) -> Figure | None:
    """One panel per metric of LAYER_KEYS with any measured value: the metric against layer, one line (and
    colour) per hook type, standard errors as error bars. None when no SAE sits inside a block."""
    series: dict[str, list] = {}  # hook type -> [(layer, entry)]
    for entry in comparison.entries:
        layer, kind = layer_and_kind(entry.result)
        if layer is not None:
            series.setdefault(kind, []).append((layer, entry))
    keys = [k for k in LAYER_KEYS if any(e.result.metrics.get(k) is not None for s in series.values() for _, e in s)]
    if not keys:
        return None
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = _figure(9.0, 2.3 * rows, rows, cols, squeeze=False, sharex=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        for k, (kind, points) in enumerate(series.items()):
            measured = sorted(
                ((layer, e) for layer, e in points if e.result.metrics.get(key) is not None), key=lambda p: p[0]
            )
            if not measured:
                continue
            xs = [layer for layer, _ in measured]
            ys = [float(e.result.metrics[key]) for _, e in measured]
            errors = [e.result.uncertainty.get(key, 0.0) for _, e in measured]
            color = PALETTE[k % len(PALETTE)]
            ax.errorbar(
                xs, ys, yerr=errors, color=color, marker=MARKERS[k % len(MARKERS)], ms=4, lw=1.2, capsize=2, label=kind
            )
    _style_metric_axes(axes, keys)
    for ax in axes[-1]:
        ax.set_xlabel("layer", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="best")
    s = comparison.settings
    fig.suptitle(f"{len(comparison.entries)} SAEs of {s['model']}, {s['tokens_scored']:,} tokens scored", fontsize=10)
    return fig


def run_figures(comparison: Comparison) -> dict[str, tuple[str, Figure | None]]:
    """The plots of a run report, key -> (file name, figure or None: nothing to plot, a stale file is removed).
    Each hook with one SAE: metrics against layer. Some hook with several (a sweep, checkpoints): one point per
    SAE, and the L0 frontiers of the SAEs that share a hook."""
    if not shares_a_hook(comparison.entries):
        return {"by_layer": (LAYER_PLOT[0], layer_figure(comparison)), "by_sae": (SAE_PLOT[0], None)}
    figures = {"by_layer": (LAYER_PLOT[0], None), "by_sae": (SAE_PLOT[0], sae_figure(comparison))}
    rivals = [e for _, members in by_hook(comparison.entries) if len(members) > 1 for e in members]
    for y_key, (file_name, _) in FRONTIERS.items():
        figures[f"frontier_{y_key}"] = (file_name, frontier_figure(replace(comparison, entries=rivals), y_key))
    return figures


def sae_figure(comparison: Comparison) -> Figure | None:
    """One panel per metric of LAYER_KEYS with any measured value: one point per SAE (x: the SAEs in run order,
    labelled with their names), a colour and marker per hook, standard errors as error bars. None without any."""
    groups = by_hook(comparison.entries)
    ordered = [e for _, members in groups for e in members]
    keys = [k for k in LAYER_KEYS if any(e.result.metrics.get(k) is not None for e in ordered)]
    if not keys:
        return None
    cols = 2
    rows = math.ceil(len(keys) / cols)
    width = min(16.0, max(9.0, 0.35 * len(ordered)))
    fig, axes = _figure(width, 2.3 * rows + 0.6, rows, cols, squeeze=False, sharex=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        start = 0
        for k, (hook, members) in enumerate(groups):
            xs = [start + i for i, e in enumerate(members) if e.result.metrics.get(key) is not None]
            chosen = [e for e in members if e.result.metrics.get(key) is not None]
            start += len(members)
            if not chosen:
                continue
            ax.errorbar(
                xs,
                [float(e.result.metrics[key]) for e in chosen],
                yerr=[e.result.uncertainty.get(key, 0.0) for e in chosen],
                fmt=MARKERS[k % len(MARKERS)],
                color=PALETTE[k % len(PALETTE)],
                ms=4,
                capsize=2,
                label=short_hook(hook),
            )
    _style_metric_axes(axes, keys)
    for ax in axes[-1]:
        ax.set_xticks(range(len(ordered)))
        ax.set_xticklabels([e.name for e in ordered], rotation=45, ha="right", fontsize=7)
    axes.flat[0].legend(fontsize=7, loc="best", title="hook", title_fontsize=7)
    s = comparison.settings
    fig.suptitle(f"{len(ordered)} SAEs of {s['model']}, {s['tokens_scored']:,} tokens scored", fontsize=10)
    return fig


def _style_metric_axes(axes, keys) -> None:
    """One metric per subplot: its label, small ticks, a light grid; the subplots left over are hidden."""
    for ax, key in zip(axes.flat, keys, strict=False):  # more subplots than metrics: the rest are hidden
        ax.set_ylabel(AXIS_LABELS.get(key, metric_label(key)), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
