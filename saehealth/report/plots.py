"""PNG plots for the markdown report, drawn with matplotlib's object API on the Agg canvas (no pyplot,
no global backend state, safe to call from any thread or from a headless machine).

Each function returns the figure or None when the result lacks what it needs; `make_plots` saves the
ones that exist and returns {name: path}.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saehealth.metrics.sparsity import dead_rate_bound
from saehealth.report.diagnostics_report import BY_POSITION_PANELS
from saehealth.report.text import as_numpy, per_letter_absorption
from saehealth.result import EvalResult
from saehealth.verdicts import verdicts_of

GREEN, YELLOW, RED, GREY, BLUE = "#2e9e5b", "#e3a21a", "#d64541", "#9a9a9a", "#3a6ea5"
DPI = 110
PROBE_F1_MIN = 0.6  # METRICS.md: letters whose probe F1 is not above this are not scored

# name -> (file name, caption); the markdown report shows them in this order.
PLOTS = {
    "density": ("latent_density.png", "Latent firing density (log10), with dead latents in their own bar"),
    "l0": ("l0_distribution.png", "Per-token L0: how many latents fire on each token"),
    "loss": ("ce_kl.png", "Cross-entropy and KL divergence: clean vs SAE spliced in vs zero-ablated"),
    "absorption": ("absorption_per_letter.png", "Feature absorption per first letter"),
    "decoder_cosine": ("decoder_cosine.png", "Each latent's largest decoder cosine with another latent"),
    "by_position": ("by_position.png", "By position: explained variance, L0, Δ CE and KL per position bucket"),
}


def _figure(width: float = 7.5, height: float = 3.8, rows: int = 1, cols: int = 1, **kwargs):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, **kwargs)
    return fig, axes


def density_figure(result: EvalResult, details: dict) -> Figure | None:
    """Histogram of log10 firing density over live latents, dead latents as a separate red bar on the left."""
    density = as_numpy(details.get("feature_density"))
    if density is None or density.size == 0:
        return None
    counts = as_numpy(details.get("firing_counts"))
    dead = (counts == 0) if counts is not None else (density <= 0)
    alive = np.log10(density[~dead & (density > 0)])
    T = result.eval.tokens_scored
    floor = math.log10(1 / T) if T else (alive.min() if alive.size else -6)
    lo = math.floor(min(floor, alive.min() if alive.size else floor) * 4) / 4
    edges = np.arange(lo, 0.25, 0.25)
    fig, ax = _figure()
    hist, _ = np.histogram(alive, bins=edges)
    colors = [YELLOW if left >= -1 else GREEN for left in edges[:-1]]
    ax.bar(edges[:-1], hist, width=0.25, align="edge", color=colors, edgecolor="white", linewidth=0.5)
    dead_x = lo - 0.75
    n_dead = int(dead.sum())
    ax.bar([dead_x], [n_dead], width=0.5, color=RED, edgecolor="white")
    top = max(int(hist.max()) if hist.size else 0, n_dead, 1)
    if n_dead > 10 * max(int(hist.max()) if hist.size else 0, 1):
        ax.set_yscale("log")  # otherwise the dead bar flattens every live bin
    ax.annotate(
        f"{n_dead:,} dead\n({100 * n_dead / density.size:.1f}%)",
        (dead_x, n_dead),
        ha="center",
        va="bottom",
        fontsize=8,
        xytext=(0, 2),
        textcoords="offset points",
    )
    ax.axvline(-1, color=GREY, linestyle=":", linewidth=1)
    ax.text(
        -1,
        0.98,
        " dense > 0.1 ",
        transform=ax.get_xaxis_transform(),  # x in data units, y in axes units: always at the top
        fontsize=8,
        color=GREY,
        va="top",
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
    )
    ticks = list(range(math.ceil(lo), 1))
    ax.set_xticks([dead_x, *ticks], ["dead", *[str(t) for t in ticks]])
    ax.set_xlim(dead_x - 0.5, 0.25)
    ax.set_ylim(top=top * (12 if ax.get_yscale() == "log" else 1.25))  # room for the dead label
    ax.set_xlabel("log10 firing density (share of tokens on which the latent fires)")
    ax.set_ylabel("latents")
    ax.set_title(
        f"Latent density: d_sae = {density.size:,}, T = {T:,} tokens (dead: rate < 3/T = {dead_rate_bound(T):.1e})",
        fontsize=10,
    )
    return fig


def l0_figure(result: EvalResult, details: dict) -> Figure | None:
    """Per-token L0 distribution with the healthy (green) and borderline (yellow) bands shaded."""
    hist = as_numpy(details.get("l0_histogram"))
    if hist is None or hist.sum() == 0:
        return None
    edges = as_numpy(details.get("l0_histogram_edges"))
    if edges is None or edges.size != hist.size + 1:
        edges = np.arange(hist.size + 1) - 0.5  # bin i holds tokens with exactly i active latents
    last = int(np.nonzero(hist)[0].max()) + 1
    hist, edges = hist[:last], edges[: last + 1]
    if hist.size > 120:  # too many single-value bins to draw: merge into 100
        centres = (edges[:-1] + edges[1:]) / 2
        edges = np.linspace(edges[0], edges[-1], 101)
        hist, _ = np.histogram(centres, bins=edges, weights=hist)
    fig, ax = _figure()
    verdict = verdicts_of(result).get("l0", {})
    x_max = edges[-1]
    healthy, borderline = verdict.get("healthy_range"), verdict.get("borderline_range")
    if healthy:
        b_lo, b_hi = borderline or [None, None]
        h_lo, h_hi = healthy
        ax.axvspan(
            b_lo if b_lo is not None else 0,
            h_lo if h_lo is not None else 0,
            color=YELLOW,
            alpha=0.12,
            lw=0,
            label=f"borderline {verdict.get('borderline', '')}",
        )
        if h_hi is not None:
            ax.axvspan(h_hi, b_hi if b_hi is not None else max(x_max, h_hi * 1.5), color=YELLOW, alpha=0.12, lw=0)
        ax.axvspan(
            h_lo or 0,
            h_hi if h_hi is not None else x_max,
            color=GREEN,
            alpha=0.12,
            lw=0,
            label=f"healthy {verdict.get('band', '')}",
        )
    share = hist / hist.sum()
    ax.stairs(share, edges, fill=True, color=BLUE, alpha=0.8)
    mean = result.metrics.get("l0")
    if mean is not None:
        ax.axvline(mean, color="black", linewidth=1.2, label=f"mean L0 = {mean:.1f}")
    ax.set_xlim(left=min(edges[0], 0), right=max(x_max, (healthy[1] or 0) * 1.1 if healthy and healthy[1] else x_max))
    ax.set_xlabel("active latents on a token (L0)")
    ax.set_ylabel("share of tokens")
    ax.set_title("Per-token L0 distribution", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def loss_figure(result: EvalResult, details: dict) -> Figure | None:
    """CE of clean / spliced / zero-ablated model, and KL to clean of the spliced and ablated models."""
    m = result.metrics
    ce = [m.get("ce_loss_clean"), m.get("ce_loss_with_sae"), m.get("ce_loss_zero_ablation")]
    kl = [m.get("kl_div_with_sae"), m.get("kl_div_zero_ablation")]
    has_kl = all(v is not None for v in kl)
    if any(v is None for v in ce):
        return None
    fig, axes = _figure(8.5 if has_kl else 5.5, 3.6, 1, 2 if has_kl else 1, squeeze=False)
    ax = axes[0][0]
    bars = ax.bar(["clean", "SAE spliced", "zero-ablated"], ce, color=[GREEN, BLUE, RED])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in ce], fontsize=8, padding=2)
    ax.set_ylabel("cross-entropy (nats)")
    subtitle = []
    if m.get("delta_ce") is not None:
        subtitle.append(f"Δ CE = {m['delta_ce']:.3f}")
    if m.get("loss_recovered") is not None:
        subtitle.append(f"loss recovered = {m['loss_recovered']:.3f}")
    ax.set_title("Next-token CE\n" + ", ".join(subtitle), fontsize=10)
    ax.set_ylim(top=max(ce) * 1.15)
    if has_kl:
        ax = axes[0][1]
        bars = ax.bar(["SAE spliced", "zero-ablated"], kl, color=[BLUE, RED])
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in kl], fontsize=8, padding=2)
        ax.set_ylabel("KL(clean ‖ modified), nats")
        score = m.get("kl_div_score")
        ax.set_title("KL to the clean model" + (f"\nKL score = {score:.3f}" if score is not None else ""), fontsize=10)
        ax.set_ylim(top=max(kl) * 1.15 or 1)
    return fig


def absorption_figure(result: EvalResult, details: dict) -> Figure | None:
    """Absorption fraction per first letter (grey × where a letter was not scored), probe F1 below."""
    per_letter = per_letter_absorption(details)
    if per_letter is None or per_letter.size != 26 or not np.isfinite(per_letter).any():
        return None
    f1 = as_numpy(details.get("absorption_probe_f1"))
    rows = 2 if f1 is not None and f1.size == 26 else 1
    fig, axes = _figure(
        8.5, 4.6 if rows == 2 else 3.4, rows, 1, squeeze=False, sharex=True, height_ratios=[2, 1][:rows]
    )
    letters = list(string.ascii_lowercase)
    x = np.arange(26)
    ax = axes[0][0]
    scored = np.isfinite(per_letter)
    verdict = verdicts_of(result).get("absorption_fraction", {})
    hi = (verdict.get("healthy_range") or [None, None])[1]
    b_hi = (verdict.get("borderline_range") or [None, None])[1]
    colors = [
        GREEN if hi is None or v <= hi else (YELLOW if b_hi is None or v <= b_hi else RED)
        for v in np.nan_to_num(per_letter)
    ]
    ax.bar(x[scored], per_letter[scored], color=[c for c, s in zip(colors, scored, strict=True) if s])
    ax.scatter(x[~scored], np.zeros((~scored).sum()), marker="x", color=GREY, label="not scored")
    full = as_numpy(details.get("absorption_full_absorption_rate"))
    if full is not None and full.shape == (26,) and np.isfinite(full).any():
        ok = np.isfinite(full)
        ax.scatter(x[ok], full[ok], marker="_", s=120, color="black", linewidths=2, label="full absorption rate")
    if hi is not None:
        ax.axhline(hi, color=GREEN, linestyle="--", linewidth=1, label=f"healthy ≤ {hi:g}")
    if b_hi is not None:
        ax.axhline(b_hi, color=RED, linestyle="--", linewidth=1, label=f"unhealthy > {b_hi:g}")
    mean = result.metrics.get("absorption_fraction")
    estimator = result.eval.absorption_estimator("absorption_fraction")
    note = f" (mean {mean:.3f}" + (f", {estimator})" if estimator else ")")
    if mean is None:
        note = " (too few letters scored for a verdict)"
    ax.set_title("Absorption fraction per first letter" + note, fontsize=10)
    ax.set_ylabel("absorption fraction")
    ax.set_ylim(0, max(1.0, float(np.nanmax(per_letter)) * 1.1))
    ax.legend(fontsize=8, loc="upper right", ncols=4)
    if rows == 2:
        ax2 = axes[1][0]
        ok = np.isfinite(f1)
        ax2.bar(x[ok], f1[ok], color=[BLUE if s else GREY for s in scored[ok]])
        ax2.scatter(x[~ok], np.zeros((~ok).sum()), marker="x", color=GREY)  # no probe at all (no such words)
        ax2.axhline(PROBE_F1_MIN, color=GREY, linestyle=":", linewidth=1)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("probe F1")
        ax2.set_title(f"First-letter probe F1 (grey: not scored; letters need F1 > {PROBE_F1_MIN})", fontsize=9)
        axes_bottom = ax2
    else:
        axes_bottom = ax
    axes_bottom.set_xticks(x, letters)
    axes_bottom.set_xlabel("first letter")
    return fig


def decoder_cosine_figure(result: EvalResult, details: dict) -> Figure | None:
    """Histogram of each latent's largest decoder cosine, with the 0.9 near-duplicate line."""
    max_cos = as_numpy(details.get("max_decoder_cosine"))
    if max_cos is None or max_cos.size == 0:
        return None
    fig, ax = _figure(7.5, 3.4)
    lo = min(0.0, float(max_cos.min()))
    ax.hist(max_cos, bins=np.linspace(lo, 1.0, 51), color=BLUE, alpha=0.85)
    ax.axvline(0.9, color=RED, linestyle="--", linewidth=1)
    n_dup = int((max_cos > 0.9).sum())
    ax.text(
        0.895,
        ax.get_ylim()[1] * 0.95,
        f"{n_dup:,} near-duplicates (> 0.9) ",
        color=RED,
        fontsize=8,
        ha="right",
        va="top",
    )
    ax.set_xlabel("largest cosine between the latent's decoder row and any other latent's")
    ax.set_ylabel("latents")
    ax.set_title(f"Decoder redundancy: mean {float(max_cos.mean()):.3f}", fontsize=10)
    return fig


def by_position_figure(result: EvalResult, details: dict) -> Figure | None:
    """Explained variance, L0, ΔCE and KL per log-spaced position bucket; a dashed line at the SAE's training
    context when the checkpoint records it."""
    data = (result.diagnostics or {}).get("by_position")
    if not data:
        return None
    panels = [(key, label) for key, label in BY_POSITION_PANELS if key in data]
    fig, axes = _figure(8.5, 5.2, 2, 2, squeeze=False)
    x = data["first_position"]
    trained = data.get("training_context")
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        points = [(xi, v) for xi, v in zip(x, data[key], strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=BLUE)
        ax.set_xscale("log", base=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("position (bucket start)", fontsize=8)
        if trained:
            ax.axvline(trained, color=RED, linestyle="--", linewidth=1, label=f"training context {trained}")
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return fig


FIGURES: dict[str, Callable[[EvalResult, dict], Figure | None]] = {
    "density": density_figure,
    "l0": l0_figure,
    "loss": loss_figure,
    "absorption": absorption_figure,
    "decoder_cosine": decoder_cosine_figure,
    "by_position": by_position_figure,
}


def plot_images(result: EvalResult, details: dict | None) -> dict[str, bytes]:
    """Every plot the result has data for, as PNG bytes: {name: png}, in report order."""
    import io

    images: dict[str, bytes] = {}
    for name, draw in FIGURES.items():
        fig = draw(result, details or {})
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        images[name] = buffer.getvalue()
    return images


def make_plots(
    result: EvalResult, details: dict | None, folder: Path, images: dict[str, bytes] | None = None
) -> dict[str, Path]:
    """Write every plot the result has data for into `folder` (drawn now, or the `plot_images` given);
    {name: png path}, in report order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, png in (plot_images(result, details) if images is None else images).items():
        path = folder / PLOTS[name][0]
        path.write_bytes(png)
        paths[name] = path
    return paths
