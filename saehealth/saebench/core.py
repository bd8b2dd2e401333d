"""SAEBench 0.6's core metrics of one evaluation, under SAEBench's names and in SAEBench's definitions.

Where SAEBench's `evals/core/main.py` computes a number the way saehealth does, it is taken from the saehealth
metric (`SAME_AS_SAEHEALTH`); where it does not, from SAEBench's own definition computed from the running sums
in `sums.py` during the same pass. The result stores the whole set as `saebench_core`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from saehealth.saebench.sums import SUMS_KEYS

# SAEBench's CoreMetricCategories (evals/core/eval_output.py): category -> its metrics, in SAEBench's order.
CORE_CATEGORIES = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": (
        "ce_loss_score",
        "ce_loss_with_ablation",
        "ce_loss_with_sae",
        "ce_loss_without_sae",
    ),
    "reconstruction_quality": ("explained_variance", "explained_variance_legacy", "mse", "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
    "misc_metrics": (
        "freq_over_1_percent",
        "freq_over_10_percent",
        "normalized_freq_over_1_percent",
        "normalized_freq_over_10_percent",
        "average_max_encoder_cosine_sim",
        "average_max_decoder_cosine_sim",
        "frac_alive",
    ),
}
CORE_KEYS = tuple(key for keys in CORE_CATEGORIES.values() for key in keys)
# SAEBench core metric -> the saehealth metric with the same definition.
SAME_AS_SAEHEALTH = {
    "ce_loss_score": "loss_recovered",
    "ce_loss_with_ablation": "ce_loss_zero_ablation",
    "ce_loss_with_sae": "ce_loss_with_sae",
    "ce_loss_without_sae": "ce_loss_clean",
    "cossim": "cossim",
    "l0": "l0",
    "average_max_decoder_cosine_sim": "decoder_redundancy",
}


def core_metrics(
    metrics: Mapping, sums: Mapping, details: Mapping[str, torch.Tensor], n_tokens: int
) -> dict[str, float | int | None]:
    """Every SAEBench core metric, flat: `metrics` are saehealth's, `sums` `SAEBenchSums.result()`'s values,
    `details` the per-latent arrays (for the encoder cosines), `n_tokens` the tokens run (SAEBench's token
    stats count every position, kept or not). None where a value was not measured or is 0/0."""
    values: dict[str, float | int | None] = dict.fromkeys(CORE_KEYS)
    values.update({key: metrics.get(name) for key, name in SAME_AS_SAEHEALTH.items()})
    values.update({key: sums.get(key) for key in SUMS_KEYS})
    if "max_encoder_cosine" in details and details["max_encoder_cosine"].numel() > 0:
        values["average_max_encoder_cosine_sim"] = float(details["max_encoder_cosine"].double().mean())
    values["total_tokens_eval_reconstruction"] = n_tokens
    values["total_tokens_eval_sparsity_variance"] = n_tokens
    return values
