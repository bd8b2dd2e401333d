"""The per-sequence quantities the pass keeps for standard errors, and the ratio metrics made of them.

Every headline metric is a ratio of sums of these per-sequence totals (metrics/clusters.py); `paired_totals` keeps
several SAEs' totals side by side for their paired differences (comparison_differences.py).
"""

from __future__ import annotations

from saehealth.metrics.clusters import SequenceTotals

# Per-sequence totals kept for standard errors (see metrics/clusters.py).
DOWNSTREAM_QUANTITIES = (
    "n_pred",
    "ce_clean",
    "ce_sae",
    "ce_zero",
    "kl_sae",
    "kl_zero",
    "top1_agree",
    "top5_overlap",
    "kl_random",  # KL of the random perturbation of the SAE's error norm (metrics/pathological.py), else zero
)
SEQUENCE_QUANTITIES = ("n_tokens", "l0", "sse", "sst", *DOWNSTREAM_QUANTITIES)
# metric -> (numerator, denominator) as {quantity: coefficient}; value = Σnum / Σden (+ offset below).
RATIO_METRICS = {
    "loss_recovered": ({"ce_zero": 1, "ce_sae": -1}, {"ce_zero": 1, "ce_clean": -1}),
    "delta_ce": ({"ce_sae": 1, "ce_clean": -1}, {"n_pred": 1}),
    "kl_div_score": ({"kl_sae": 1}, {"kl_zero": 1}),  # 1 − ratio: same standard error
    "explained_variance": ({"sse": 1}, {"sst": 1}),  # 1 − ratio: same standard error
    "l0": ({"l0": 1}, {"n_tokens": 1}),
    "next_token_agreement": ({"top1_agree": 1}, {"n_pred": 1}),
    "top5_overlap": ({"top5_overlap": 1}, {"n_pred": 1}),
    "pathological_ratio": ({"kl_sae": 1}, {"kl_random": 1}),
}


def paired_totals(n_members: int) -> SequenceTotals:
    """Per-sequence totals of `n_members` SAEs side by side ("i/quantity"), for their paired differences."""
    return SequenceTotals([f"{i}/{name}" for i in range(n_members) for name in SEQUENCE_QUANTITIES])
