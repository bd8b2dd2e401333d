"""Builders of EvalResult objects and per-latent details for the report, threshold and advice tests.

`make_result()` is a healthy SAE by every default band; pass `metrics=` / `training=` overrides to make
it sick in a chosen way. Counts follow their fractions (dead_features from dead_fraction, ...), so the
numbers stay consistent with each other."""

from __future__ import annotations

import numpy as np
import torch

from saehealth.result import METRIC_KEYS, EvalResult, EvalSettings, Provenance, SAEInfo
from saehealth.thresholds import load_thresholds
from saehealth.verdicts import assess

HEALTHY_METRICS = {
    "explained_variance": 0.85,
    "fvu": 0.15,
    "mse": 0.15,  # with fvu 0.15 and d_in 128: centred RMS norm √(mse·d_in/fvu) = √d_in, i.e. normalised
    "cossim": 0.93,
    "l2_ratio": 0.95,
    "relative_reconstruction_bias": 0.97,
    "ce_loss_clean": 3.0,
    "ce_loss_with_sae": 3.08,
    "ce_loss_zero_ablation": 7.0,
    "delta_ce": 0.08,
    "loss_recovered": 0.98,
    "kl_div_with_sae": 0.05,
    "kl_div_zero_ablation": 3.0,
    "kl_div_score": 1 - 0.05 / 3.0,
    "l0": 64.0,
    "l1": 30.0,
    "dead_fraction": 0.02,
    "dense_fraction": 0.002,
    "dense_unexplained_fraction": 0.001,
    "token_detector_fraction": 0.2,
    "next_token_agreement": 0.9,
    "top5_overlap": 0.85,
    "dense_features_1pct": 40,
    "decoder_redundancy": 0.45,
    "near_duplicate_latents": 3,
    "absorption_fraction": 0.12,
    "full_absorption_rate": 0.05,
    "mean_num_split_features": 1.3,
    "absorption_letters_scored": 24,
    "absorption_fraction_saebench": 0.16,
}
# The diagnostics beyond the averages of a healthy SAE at context 128 (position 1, the BOS, masked).
DIAGNOSTICS = {
    "by_position": {
        "buckets": ["1", "2–3", "4–7", "8–15", "16–31", "32–63", "64–127", "128"],
        "first_position": [1, 2, 4, 8, 16, 32, 64, 128],
        "last_position": [1, 3, 7, 15, 31, 63, 127, 128],
        "tokens": [0, 3150, 6300, 12600, 25200, 50400, 100800, 1550],
        "explained_variance": [None, 0.83, 0.85, 0.85, 0.86, 0.85, 0.85, 0.84],
        "l0": [None, 60.0, 62.0, 64.0, 64.0, 64.0, 64.0, 65.0],
        "predicting": [0, 3150, 6300, 12600, 25200, 50400, 100800, 0],
        "delta_ce": [None, 0.09, 0.08, 0.08, 0.08, 0.08, 0.08, None],
        "kl_div": [None, 0.06, 0.05, 0.05, 0.05, 0.05, 0.05, None],
        "training_context": 128,
    },
    "dense_kinds": {
        "counts": {"first_token": 0, "position": 1, "antipodal": 0, "unexplained": 1},
        "latents": {"first_token": [], "position": [7], "antipodal": [], "unexplained": [3]},
        "bounds": {},
    },
    "token_explained": {
        "bound": 0.9,
        "live_latents": 1000,
        "token_detectors": 200,
        "token_detector_fraction": 0.2,
        "median_share": 0.4,
    },
}
HEALTHY_TRAINING = {
    "training_tokens": 20_000_000,
    "lr": 3e-4,
    "l1_coefficient": 5.0,
    "normalize_activations": "expected_average_only_in",
    "architecture": "standard",
}
UNCERTAINTY = {
    "loss_recovered": 0.0021,
    "delta_ce": 0.0043,
    "kl_div_score": 0.0011,
    "explained_variance": 0.0032,
    "l0": 0.41,
}


def make_result(
    metrics: dict | None = None,
    *,
    training: dict | None = None,
    d_in: int = 128,
    d_sae: int = 1024,
    tokens_scored: int = 200_000,
    architecture: str = "standard",
    not_measured: dict | None = None,
    thresholds=None,
    notes: list[str] | None = None,
) -> EvalResult:
    """A result with healthy defaults; `metrics` values override (None = not measured), verdicts assessed."""
    values = {**HEALTHY_METRICS, **(metrics or {})}
    pairs = ("dead_features", "dead_fraction"), ("dense_features", "dense_fraction")
    for count, fraction in (*pairs, ("dense_unexplained", "dense_unexplained_fraction")):
        if count not in (metrics or {}) and values.get(fraction) is not None:
            values[count] = round(values[fraction] * d_sae)
            values[fraction] = values[count] / d_sae  # keep count and share consistent
    values = {key: values.get(key) for key in METRIC_KEYS}
    reasons = dict(not_measured or {})
    for key, value in values.items():
        if value is None:
            reasons.setdefault(key, "skipped in this test")
    result = EvalResult(
        sae=SAEInfo(
            path="checkpoints/test_sae",
            source_library="saelens",
            architecture=architecture,
            d_in=d_in,
            d_sae=d_sae,
            hook_name="blocks.0.hook_resid_post",
            model_name="saehealth-tiny",
            training={**HEALTHY_TRAINING, "architecture": architecture, **(training or {})},
        ),
        eval=EvalSettings(
            model="saehealth-tiny",
            dataset="builtin",
            split="validation",
            n_tokens=tokens_scored + tokens_scored // 127 + 1,
            tokens_scored=tokens_scored,
            context_length=128,
            batch_size=16,
            seed=42,
            mask_special_tokens=True,
            n_sequences=tokens_scored // 127 + 1,
            absorption_probes="converged",
            absorption_splits=5,
        ),
        metrics=values,
        uncertainty={k: v for k, v in UNCERTAINTY.items() if values.get(k) is not None},
        not_measured=reasons,
        provenance=Provenance(
            saehealth="0.1.0",
            sae_lens="6.54.12",
            transformer_lens="3.9.0",
            torch="2.13.0",
            device="cpu",
            dtype="float32",
            started_at="2025-01-01T00:00:00+00:00",
            duration_s=12.5,
        ),
        timing={"replay_s": 10.0, "tokens_per_second": 20000.0},
        notes=list(notes or []),
        diagnostics=DIAGNOSTICS,
    )
    result.verdicts = assess(
        result.metrics, result.not_measured, load_thresholds(thresholds), d_sae=d_sae, absorption_schedule="converged"
    )
    return result


def make_details(result: EvalResult, *, absorption: bool = True, seed: int = 0, singletons: int = 0) -> dict:
    """Per-latent arrays consistent with the result: exactly `dead_features` zero counts, lognormal densities
    around L0/d_sae for the rest, an L0 histogram around the mean L0, and per-letter absorption arrays
    (letters q, x, z not scored). `singletons` latents fire exactly once (rare but alive)."""
    rng = np.random.default_rng(seed)
    d_sae, T = result.sae.d_sae, result.eval.tokens_scored
    dead = int(result.metrics.get("dead_features") or 0)
    l0 = float(result.metrics.get("l0") or 10.0)
    counts = np.zeros(d_sae, dtype=np.int64)
    alive = d_sae - dead
    density = np.exp(rng.normal(np.log(l0 / d_sae), 1.2, alive)).clip(2 / T, 0.5)
    counts[dead:] = np.maximum(1, np.round(density * T)).astype(np.int64)
    counts[dead : dead + singletons] = 1
    l0_hist = np.bincount(rng.poisson(l0, 5_000), minlength=d_sae + 1)[: d_sae + 1]
    max_cos = rng.beta(5, 6, d_sae)
    n_dup = int(result.metrics.get("near_duplicate_latents") or 0)
    max_cos[:n_dup] = rng.uniform(0.91, 0.999, n_dup)
    details = {
        "feature_density": torch.as_tensor(counts / T),
        "firing_counts": torch.as_tensor(counts),
        "l0_histogram": torch.as_tensor(l0_hist),
        "max_decoder_cosine": torch.as_tensor(max_cos, dtype=torch.float32),
        "nearest_decoder_latent": torch.as_tensor((np.arange(d_sae) + 1) % d_sae),
    }
    if absorption:
        per_letter = rng.uniform(0.0, 0.3, 26)
        f1 = rng.uniform(0.65, 0.98, 26)
        for letter in "qxz":
            per_letter[ord(letter) - 97] = np.nan
            f1[ord(letter) - 97] = 0.4
        # The keys the eval engine writes: absorption_<per-letter array name>.
        details["absorption_absorption_fraction"] = torch.as_tensor(per_letter, dtype=torch.float32)
        details["absorption_full_absorption_rate"] = torch.as_tensor(per_letter / 3, dtype=torch.float32)
        details["absorption_probe_f1"] = torch.as_tensor(f1, dtype=torch.float32)
    return details


def seed_003_result() -> EvalResult:
    """The SAE of seed document 003: Llama-3-8B layer 12, 131,072 latents trained on 500k tokens."""
    return make_result(
        {
            "loss_recovered": 0.0723,
            "l0": 227.37,
            "dead_fraction": 0.8883,
            "absorption_fraction": None,
            "explained_variance": 0.31,
            "fvu": 0.69,
            "ce_loss_with_sae": 7.0 - 0.0723 * 4.0,
            "delta_ce": 4.0 - 0.0723 * 4.0,
            "kl_div_with_sae": 2.6,
            "kl_div_score": 1 - 2.6 / 3.0,
            "full_absorption_rate": None,
            "mean_num_split_features": None,
            "absorption_letters_scored": 12,
        },
        not_measured={"absorption_fraction": "only 12 letters had a probe with F1 > 0.6 (need 20)"},
        training={"training_tokens": 500_000, "lr": 1e-4, "l1_coefficient": 5.0, "normalize_activations": "none"},
        d_in=4096,
        d_sae=131_072,
        tokens_scored=6_400,
    )
