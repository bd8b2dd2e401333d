"""One definition of the per-letter rows and the means, for the result and the SAEBench file alike.

SAEBench 0.6 (`_aggregate_results_df` in its absorption `main.py`) makes one row per letter: the sum of the
absorption fractions over the letter's probe true positives divided by their number, and the number of
full absorptions over the same number; its means are the plain means of those rows. Here the words of every
scored word split are pooled into the rows, so each row is SAEBench's row over all the splits' true
positives (sums over splits, divided once):

    mean_absorption_fraction[l] = sum_s fraction_sum[s, l] / sum_s true_positives[s, l]
    full_absorption_rate[l]     = sum_s full_absorptions[s, l] / sum_s true_positives[s, l]

over the letters with at least one true positive (the rows SAEBench would list), `num_split_features[l]` the
mean over the splits that scored the letter, and every mean is the mean of those rows. Its standard error is
the jackknife's over the splits (the same statistic with each split left out in turn), so it is the error of
this pooled mean itself; `split_means` keeps each split's own mean for the reports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from saehealth.absorption.splits import SplitScore

# Per-letter arrays (float64, (26,), A..Z, NaN where no split scored the letter).
PER_LETTER_FLOATS = (
    "probe_f1",
    "absorption_fraction",
    "full_absorption_rate",
    "num_full_absorption",
    "num_probe_true_positives",
    "num_split_features",
)


@dataclass
class Pooled:
    """One schedule's pooled rows and means over the splits, or why there are none."""

    metrics: dict[str, float | int | None]  # absorption_fraction, full_absorption_rate, mean_num_split_features
    standard_error: float | None
    letters_scored: int  # median (low) over splits of the letters passing the F1 gate
    reason: str | None  # why the means are None
    per_letter: dict[str, np.ndarray]
    split_means: np.ndarray  # (scored splits,) the absorption fraction of each split alone
    splits_scored: int
    notes: list[str]


def pool(scores: list[SplitScore], *, schedule: str, min_letters: int, min_probe_f1: float) -> Pooled:
    """The per-letter rows and means of one schedule over its splits (see the module docstring)."""
    n = len(scores)
    counts = [s.letters_passing for s in scores]
    letters_scored = int(statistics.median_low(counts))
    per_letter = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    with np.errstate(invalid="ignore"):
        per_letter["probe_f1"] = _nanmean(np.stack([s.probe_f1 for s in scores]))
    empty = dict.fromkeys(("absorption_fraction", "full_absorption_rate", "mean_num_split_features"))
    scored = [s for s in scores if s.scored]
    if not scored:
        where = f"median over {n} word splits, each {', '.join(map(str, counts))}; " if n > 1 else ""
        reason = (
            f"only {letters_scored} letters had probe F1 > {min_probe_f1} ({where}minimum {min_letters}, "
            f"{schedule} probes: lower it with --absorption-min-letters)"
        )
        return Pooled(empty, None, letters_scored, reason, per_letter, np.zeros(0), 0, [])
    notes = []
    if len(scored) < n:
        notes.append(
            f"Absorption ({schedule} probes): {n - len(scored)} of {n} word splits had fewer than {min_letters} "
            "letters with a usable probe and were not scored."
        )
    fraction_sum, true_positives, full, times_scored, feature_sum = _sums(scored)
    any_split = times_scored > 0
    rows = true_positives > 0
    per_letter["num_probe_true_positives"] = np.where(any_split, true_positives, np.nan).astype(np.float64)
    per_letter["num_full_absorption"] = np.where(any_split, full, np.nan).astype(np.float64)
    per_letter["num_split_features"] = np.where(any_split, feature_sum / np.maximum(times_scored, 1), np.nan)
    safe = np.maximum(true_positives, 1)
    per_letter["absorption_fraction"] = np.where(rows, fraction_sum / safe, np.nan)
    per_letter["full_absorption_rate"] = np.where(rows, full / safe, np.nan)
    per_letter["main_latents"] = scored[0].main_latents  # latent ids are the first scored split's
    per_letter["absorbing_latents"] = scored[0].absorbing_latents
    split_means = np.array([_split_mean(s) for s in scored])
    per_letter["split_absorption_fraction"] = split_means
    if not rows.any():
        reason = f"no letter's probe ({schedule}) detected any held-out word of its letter"
        return Pooled(empty, None, letters_scored, reason, per_letter, split_means, len(scored), notes)
    metrics = {
        "absorption_fraction": float(per_letter["absorption_fraction"][rows].mean()),
        "full_absorption_rate": float(per_letter["full_absorption_rate"][rows].mean()),
        "mean_num_split_features": float(per_letter["num_split_features"][rows].mean()),
    }
    return Pooled(metrics, _jackknife_error(scored), letters_scored, None, per_letter, split_means, len(scored), notes)


def _sums(scored: list[SplitScore]):
    """(fraction sums, true positives, full absorptions, times scored, main-latent counts) summed over splits."""
    return tuple(
        np.sum([getattr(s, name) for s in scored], axis=0, dtype=np.float64 if name == "fraction_sum" else np.int64)
        for name in ("fraction_sum", "true_positives", "full_absorptions", "scored_letters", "split_features")
    )


def _pooled_mean(scored: list[SplitScore]) -> float:
    """The pooled mean absorption fraction of these splits (NaN when no letter has a true positive)."""
    fraction_sum, true_positives, *_ = _sums(scored)
    rows = true_positives > 0
    return float(np.mean(fraction_sum[rows] / true_positives[rows])) if rows.any() else float("nan")


def _jackknife_error(scored: list[SplitScore]) -> float | None:
    """Jackknife standard error over splits: sqrt((n - 1) / n * sum_i (mean without split i - their mean)^2)."""
    n = len(scored)
    if n < 2:
        return None
    left_out = np.array([_pooled_mean(scored[:i] + scored[i + 1 :]) for i in range(n)])
    if not np.isfinite(left_out).all():
        return None
    return float(np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2)))


def _split_mean(score: SplitScore) -> float:
    """SAEBench's mean absorption fraction of one split alone (NaN when no letter had a true positive)."""
    rows = score.true_positives > 0
    if not rows.any():
        return float("nan")
    return float(np.mean(score.fraction_sum[rows] / score.true_positives[rows]))


def _nanmean(stacked: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN (without a warning) where a column is all NaN."""
    finite = np.isfinite(stacked)
    total = np.where(finite, stacked, 0.0).sum(0)
    count = finite.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
