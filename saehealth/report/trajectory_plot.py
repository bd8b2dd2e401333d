"""Metrics against training tokens: the checkpoints of one training run (`saehealth eval` of its checkpoints
folder) and the health checks during training (`saehealth train --health-every`, training/health.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

# The panels, in order: the headline metrics and explained variance.
TRAJECTORY_KEYS = ("loss_recovered", "explained_variance", "l0", "dead_fraction")
TRAJECTORY_PLOT = ("metrics_by_training_tokens.png", "Metrics against training tokens")


def trajectory_figure(
    tokens: Sequence[int],
    metrics: Sequence[Mapping],
    uncertainty: Sequence[Mapping] | None = None,
    title: str = TRAJECTORY_PLOT[1],
) -> Figure | None:
    """One panel per metric against training tokens (error bars: one standard error where known); None when no
    point has a measured value."""
    uncertainty = uncertainty or [{} for _ in tokens]
    fig = Figure(figsize=(4 * len(TRAJECTORY_KEYS), 3.2))
    axes = fig.subplots(1, len(TRAJECTORY_KEYS))
    plotted = False
    for ax, key in zip(axes, TRAJECTORY_KEYS, strict=True):
        points = [(t, m.get(key), u.get(key)) for t, m, u in zip(tokens, metrics, uncertainty, strict=True)]
        points = [p for p in points if p[1] is not None]
        if points:
            errors = [p[2] or 0.0 for p in points]
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=errors, marker="o", capsize=3)
            plotted = True
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig if plotted else None
