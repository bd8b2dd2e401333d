"""Formatting shared by the terminal and markdown reports: values with uncertainty, status marks, the
header facts and the latent-density bins. Nothing here draws; it only turns a result into strings."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from saehealth.advice import per_letter_absorption  # noqa: F401  (re-exported for the plots)
from saehealth.metrics.sparsity import dead_rate_bound
from saehealth.result import EvalResult
from saehealth.thresholds import BORDERLINE, HEALTHY, NOT_MEASURED, UNHEALTHY

STATUS_EMOJI = {HEALTHY: "✅", BORDERLINE: "⚠️", UNHEALTHY: "❌", NOT_MEASURED: "❔"}
STATUS_MARK = {HEALTHY: "✔", BORDERLINE: "◐", UNHEALTHY: "✘", NOT_MEASURED: "?"}
STATUS_STYLE = {HEALTHY: "green", BORDERLINE: "yellow", UNHEALTHY: "bold red", NOT_MEASURED: "dim"}
SEVERITY_MARK = {"critical": "✘", "warning": "▲", "info": "●", "ok": "✔"}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}

LABELS = {
    "loss_recovered": "Loss recovered",
    "l0": "L0 (per token)",
    "dead_fraction": "Dead latents",
    "absorption_fraction": "Feature absorption",
    "absorption_fraction_saebench": "Feature absorption (SAEBench's schedule)",
    "explained_variance": "Explained variance",
    "kl_div_score": "KL divergence score",
    "delta_ce": "Δ CE (nats)",
    "dense_fraction": "Dense latents (> 10%)",
    "dense_unexplained_fraction": "Unexplained dense latents (> 10%)",
    "token_detector_fraction": "Token-detector latents",
    "near_duplicate_fraction": "Near-duplicate latents",
    "decoder_redundancy": "Decoder redundancy",
    "routing_unused_layers": "Unused routed layers",
    "routing_collapse": "Largest route share",
}
# Column headers of a comparison table (markdown and HTML), short enough for a column.
COMPARISON_HEADERS = {
    "l0": "L0",
    "loss_recovered": "loss recovered",
    "delta_ce": "ΔCE",
    "kl_div_score": "KL score",
    "explained_variance": "explained var.",
    "dead_fraction": "dead",
    "dense_fraction": "dense",
    "absorption_fraction": "absorption",
}


def absorption_column_estimator(results: list[EvalResult]) -> str | None:
    """The estimator behind a comparison's absorption column ('converged probes, 5 word splits'), 'mixed: ...'
    when the results differ, None when no result measured absorption."""
    found = {
        r.eval.absorption_estimator("absorption_fraction")
        for r in results
        if r.metrics.get("absorption_fraction") is not None
    } - {None}
    if not found:
        return None
    return found.pop() if len(found) == 1 else "mixed: " + "; ".join(sorted(found))


def comparison_header(key: str, results: list[EvalResult]) -> str:
    """A comparison's markdown and HTML column header; the absorption column names its estimator."""
    estimator = absorption_column_estimator(results) if key == "absorption_fraction" else None
    return f"{COMPARISON_HEADERS[key]} ({estimator})" if estimator else COMPARISON_HEADERS[key]


COUNT_KEYS = {
    "dead_features",
    "dense_features",
    "dense_features_1pct",
    "dense_unexplained",
    "near_duplicate_latents",
    "absorption_letters_scored",
    "routing_unused_layers",
}
# Metrics shown under "Other measurements" when no band judges them.
OTHER_KEYS = (
    "ce_loss_clean",
    "ce_loss_with_sae",
    "ce_loss_zero_ablation",
    "kl_div_with_sae",
    "kl_div_zero_ablation",
    "fvu",
    "mse",
    "cossim",
    "l2_ratio",
    "relative_reconstruction_bias",
    "l1",
    "dead_features",
    "dense_features",
    "dense_features_1pct",
    "dense_fraction",
    "dense_unexplained",
    "next_token_agreement",
    "top5_overlap",
    "pathological_ratio",
    "kl_div_random",
    "near_duplicate_latents",
    "absorption_fraction_saebench",
    "full_absorption_rate",
    "mean_num_split_features",
    "absorption_letters_scored",
)


def label(key: str) -> str:
    return LABELS.get(key, key)


def format_value(key: str, value, se: float | None = None) -> str:
    """'0.9812 ± 0.0013', '64.2 ± 0.3', '1,024', 'not measured'. With an uncertainty, the value gets the
    decimals of the standard error's second significant figure."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not measured"
    if key in COUNT_KEYS or isinstance(value, bool):
        return f"{int(value):,}"
    if se is not None and se > 0 and math.isfinite(se):
        decimals = min(6, max(0, 1 - math.floor(math.log10(se))))
        return f"{value:.{decimals}f} ± {se:.{decimals}f}"
    if key in ("l0", "l1"):
        return f"{value:.1f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def format_activation(value) -> str:
    """A latent activation or logit: three significant figures ('4.51', '0.0123', '1.23e+04'); '—' for
    none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        decimals = max(0, 2 - math.floor(math.log10(abs(value))))
        return f"{value:.{decimals}f}"
    return f"{value:.2e}"


def format_density(value) -> str:
    """A firing density (share of tokens): '0.231', '0.0042', '3.1e-05'; '0' for a dead latent."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2g}"


def measurement_rows(result: EvalResult, verdicts: Mapping) -> list[tuple[str, str, str]]:
    """(key, formatted value, note) for "All measurements": every judged metric, then the others; the note
    says why a value is missing."""
    rows = []
    for key in [*verdicts, *[k for k in OTHER_KEYS if k not in verdicts]]:
        value = verdicts[key]["value"] if key in verdicts else result.metrics.get(key)
        note = result.not_measured.get(key, "") if value is None else ""
        if key in verdicts and value is None:
            note = verdicts[key].get("reason") or note
        text = format_value(key, value, result.uncertainty.get(key))
        if value is not None and (estimator := result.eval.absorption_estimator(key)):
            text += f" ({estimator})"
        rows.append((key, text, note))
    return rows


def overall_status(verdicts: Mapping) -> str:
    """unhealthy when any headline metric is, healthy when all are, else borderline."""
    from saehealth.verdicts import is_unhealthy

    if is_unhealthy(verdicts):
        return UNHEALTHY
    return HEALTHY if all(v["status"] == HEALTHY for v in verdicts.values() if v.get("headline")) else BORDERLINE


def value_with_context(result: EvalResult, key: str, verdict: Mapping) -> str:
    """The value ± uncertainty, plus the latent count behind a fraction ('0.888 (116,437 of 131,072)')."""
    text = format_value(key, verdict.get("value"), result.uncertainty.get(key))
    counts = {
        "dead_fraction": "dead_features",
        "dense_fraction": "dense_features",
        "near_duplicate_fraction": "near_duplicate_latents",
    }
    count = result.metrics.get(counts.get(key, ""))
    if verdict.get("value") is not None and count is not None:
        text += f" ({int(count):,} of {result.sae.d_sae:,})"
    if verdict.get("value") is not None and (estimator := result.eval.absorption_estimator(key)):
        text += f" ({estimator})"
    return text


def standard_text(verdict: Mapping) -> str:
    """'≥ 0.70 (borderline 0.60 – 0.70)'; an absorption band adds the schedule it was set for."""
    borderline = verdict.get("borderline")
    text = str(verdict["band"])
    if borderline and borderline != "—":
        text += f" (borderline {borderline})"
    return text + band_estimator_text(verdict)


def band_estimator_text(verdict: Mapping) -> str:
    """', set for converged probes' for a band declared for one absorption estimator, else ''."""
    return f", set for {verdict['estimator']} probes" if verdict.get("estimator") else ""


def status_text(verdict: Mapping) -> str:
    """'unhealthy', or 'not measured: <why>'."""
    if verdict["status"] == NOT_MEASURED and verdict.get("reason"):
        return f"not measured: {verdict['reason']}"
    return verdict["status"]


def dead_bound_sentence(result: EvalResult) -> str:
    """The 3/T statement METRICS.md asks every report to carry."""
    T = result.eval.tokens_scored
    if not T:
        return "No tokens were scored, so no latent can be called dead."
    return (
        f"T = {T:,} tokens scored: a latent that never fired in T tokens fires below 3/T = {dead_rate_bound(T):.2g} "
        "with 95% confidence."
    )


def header_facts(result: EvalResult) -> list[tuple[str, str]]:
    """(label, value) pairs for the report header."""
    sae, ev = result.sae, result.eval
    expansion = f" (×{sae.d_sae / sae.d_in:g})" if sae.d_in else ""
    facts = [
        ("SAE", sae.path),
        ("Library / architecture", f"{sae.source_library} / {sae.architecture}"),
        ("Model / hook", f"{ev.model or sae.model_name} / {sae.where}"),
        ("Width", f"d_in {sae.d_in:,} → d_sae {sae.d_sae:,}{expansion}"),
        (
            "Evaluated on",
            f"{ev.dataset} [{ev.split}]: T = {ev.tokens_scored:,} tokens scored of {ev.n_tokens:,} "
            f"({ev.n_sequences:,} × {ev.context_length}; special tokens {'masked' if ev.mask_special_tokens else 'included'})",
        ),
    ]
    training = training_summary(result.sae.training)
    if training:
        facts.append(("Training", training))
    return facts


def training_summary(training: Mapping) -> str:
    """'20,000,000 tokens · lr 0.0003 · l1_coefficient 5 · normalize_activations none' from what the checkpoint records."""
    parts = []
    tokens = training.get("training_tokens", training.get("total_training_tokens"))
    if tokens is not None:
        parts.append(f"{int(tokens):,} tokens")
    for key in ("lr", "l1_coefficient", "l0_coefficient", "k", "aux_loss_coefficient", "normalize_activations"):
        if training.get(key) is not None:
            value = training[key]
            parts.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    return " · ".join(parts)


def as_numpy(value) -> np.ndarray | None:
    """A details tensor/array/list as float64 numpy (None stays None)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def density_bins(details: Mapping, tokens_scored: int) -> list[tuple[str, int, str]] | None:
    """Latent counts per decade of firing density, with dead latents (never fired) in their own first bin.

    Returns (label, count, kind) with kind 'dead', 'alive' or 'dense' (density ≥ 0.1), or None without
    per-latent densities."""
    density = as_numpy(details.get("feature_density"))
    if density is None or density.size == 0:
        return None
    counts = as_numpy(details.get("firing_counts"))
    dead = (counts == 0) if counts is not None else (density <= 0)
    alive = density[~dead & (density > 0)]
    lowest = math.floor(math.log10(1 / tokens_scored)) if tokens_scored else -8
    if alive.size:
        lowest = min(lowest, math.floor(np.log10(alive).min()))
    bins = [("dead", int(dead.sum()), "dead")]
    for exponent in range(lowest, 0):
        lo, hi = 10.0**exponent, 10.0 ** (exponent + 1)
        upper = alive <= hi if exponent == -1 else alive < hi  # density 1.0 belongs to the top bin
        n = int(((alive >= lo) & upper).sum())
        bins.append((f"1e{exponent} – 1e{exponent + 1}", n, "dense" if exponent == -1 else "alive"))
    return bins
