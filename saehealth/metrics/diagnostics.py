"""The diagnostics beyond the averages of one SAE, from its accumulated sums (docs/diagnostics.md).

`pass_diagnostics` turns the pass's sums into what result.json's `diagnostics` holds: the by-position buckets
(metrics/positions.py), the kinds of the dense latents (metrics/dense_kinds.py) and the token-explained shares
(metrics/token_explained.py), plus their per-latent arrays for the details file.
"""

from __future__ import annotations

from saehealth.metrics.dense_kinds import LatentPositionSums, classify_dense
from saehealth.metrics.positions import PositionAccumulator
from saehealth.metrics.sparsity import DENSE_THRESHOLD, SparsityAccumulator
from saehealth.metrics.token_explained import TokenSums, token_explained_share, token_explained_summary


def pass_diagnostics(
    positions: PositionAccumulator,
    latent_positions: LatentPositionSums,
    token_sums: TokenSums | None,
    sparsity: SparsityAccumulator,
) -> tuple[dict, dict, dict]:
    """({"by_position", "dense_kinds", "token_explained"}, per-latent arrays, metrics: LATENT_KIND_KEYS).
    `token_explained` (and `token_detector_fraction`) is None without token ids (an activation cache)."""
    diagnostics: dict = {"by_position": positions.result()}
    density = sparsity.density()
    summary, per_latent = classify_dense(
        density, sparsity.firing_counts, latent_positions, positions.tokens, DENSE_THRESHOLD
    )
    diagnostics["dense_kinds"] = summary
    diagnostics["token_explained"] = None
    unexplained = summary["counts"]["unexplained"]
    metrics = {
        "dense_unexplained": unexplained,
        "dense_unexplained_fraction": unexplained / sparsity.d_sae,
        "token_detector_fraction": None,
    }
    if token_sums is not None and int(token_sums.token_counts.sum()) > 0:
        latent_sum = latent_positions.bucket_sums.sum(1)
        share = token_explained_share(token_sums, latent_sum, latent_positions.sum_sq)
        per_latent["token_explained_share"] = share
        diagnostics["token_explained"] = token_explained_summary(share, density)
        metrics["token_detector_fraction"] = diagnostics["token_explained"]["token_detector_fraction"]
    return diagnostics, per_latent, metrics
