"""Running sums for SAEBench 0.6's core metrics where SAEBench defines them differently from saehealth.

SAEBench's `evals/core/main.py` computes these per batch of prompts, over the positions it keeps (BOS, EOS
and PAD dropped), and saehealth's batches of --batch-size sequences play the part of its batches:

- explained_variance = 1 − R / (A − (A/d_in)²): A is the mean over batches of mean_t ‖x_t‖², R the mean over
  batches of mean_t ‖x_t − x̂_t‖² (it subtracts the squared mean of x² where the variance needs ‖μ‖²);
- explained_variance_legacy: the mean over tokens of 1 − ‖x_t − x̂_t‖² / ‖x_t − x̄_batch‖²;
- mse: the mean over tokens of ‖x_t − x̂_t‖² / (positions kept in the token's batch);
- relative_reconstruction_bias: the mean over batches of mean ‖x̂‖² / mean ⟨x, x̂⟩;
- l1: the mean of Σ_i f_t,i, signed; l2_norm_in, l2_norm_out: mean ‖x‖, mean ‖x̂‖; l2_ratio: the mean of
  ‖x̂‖ / ‖x‖ with norms below 1e-4 replaced by 1;
- feature density counts f > 0 (saehealth counts f ≠ 0), and consistent_activation_heuristic is, per latent,
  the positions where it fired over the prompts in which it fired at least once;
- KL over every kept position, each sequence's last included (saehealth's KL leaves it out: it predicts
  nothing).

Per-token reductions run in float32 (at least), sums across tokens and batches in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from saehealth.metrics.firings import Firings, find_firings

# Below this input norm SAEBench divides by 1 instead (evals/core/main.py, l2_norm_in_for_div).
SMALL_NORM = 1e-4
_SCALARS = (
    "batch_mean_sq_norm",
    "batch_mean_sq_error",
    "legacy_explained",
    "batch_rrb",
    "norm_in",
    "norm_out",
    "l2_ratio",
    "l1",
)


class SAEBenchSums:
    """One SAE's running sums for SAEBench's definitions; memory ∝ d_sae, like the other accumulators."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.batches = 0  # batches with at least one kept position
        self.tokens = 0
        self.sums = dict.fromkeys(_SCALARS, 0.0)
        self.positive_counts = torch.zeros(d_sae, dtype=torch.int64)
        self.sequences_fired = torch.zeros(d_sae, dtype=torch.int64)
        self.kl = {"sae": 0.0, "zero": 0.0}
        self.kl_positions = 0

    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        feature_acts: torch.Tensor,
        mask: torch.Tensor,
        downstream: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add one batch at once: x, x_hat (batch, pos, d_in), feature_acts (batch, pos, d_sae), mask (batch, pos);
        `downstream` holds its per-sequence KL totals (with `last_position_kl`'s), None without a model."""
        self.update_batch(x, x_hat, mask, downstream)
        self.update_latents(feature_acts.reshape(-1, feature_acts.shape[-1]), mask.reshape(-1), mask.shape[1])

    @torch.no_grad()
    def update_batch(
        self, x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor, downstream: dict[str, torch.Tensor] | None
    ) -> None:
        """Add one batch's activations and KL totals: what SAEBench averages per batch."""
        if downstream is not None and "kl_sae_last" in downstream:
            self.kl["sae"] += float(downstream["kl_sae"].sum() + downstream["kl_sae_last"].sum())
            self.kl["zero"] += float(downstream["kl_zero"].sum() + downstream["kl_zero_last"].sum())
            self.kl_positions += int(downstream["n_pred"].sum() + downstream["n_last"].sum())
        n = int(mask.sum())
        if n == 0:
            return
        dtype = torch.promote_types(x.dtype, torch.float32)
        x, x_hat = x.to(dtype), x_hat.to(dtype)
        kept = mask.bool()
        mean = x[kept].sum(0, dtype=torch.float64) / n
        sq_norm = x.pow(2).sum(-1)[kept].double()
        sq_error = (x - x_hat).pow(2).sum(-1)[kept].double()
        centred = (x - mean.to(dtype)).pow(2).sum(-1)[kept].double()
        norm_in, norm_out = sq_norm.sqrt(), x_hat.norm(dim=-1)[kept].double()
        dot = torch.linalg.vecdot(x, x_hat)[kept].double()

        s = self.sums
        self.batches += 1
        self.tokens += n
        s["batch_mean_sq_norm"] += float(sq_norm.mean())
        s["batch_mean_sq_error"] += float(sq_error.mean())
        s["legacy_explained"] += float((1.0 - sq_error / centred).sum())
        s["batch_rrb"] += float(norm_out.pow(2).mean() / dot.mean())
        s["norm_in"] += float(norm_in.sum())
        s["norm_out"] += float(norm_out.sum())
        s["l2_ratio"] += float((norm_out / torch.where(norm_in < SMALL_NORM, 1.0, norm_in)).sum())

    @torch.no_grad()
    def update_latents(
        self, feature_acts: torch.Tensor, mask: torch.Tensor, sequence_length: int, firings: Firings | None = None
    ) -> None:
        """Add latents of whole sequences: feature_acts (positions, d_sae), dense or sparse COO, and mask
        (positions,), the positions being consecutive sequences of `sequence_length`; `firings`, the chunk's
        when the caller has found them already."""
        found = firings if firings is not None else find_firings(feature_acts, mask)
        self.sums["l1"] += float(found.value.to(torch.float64).sum())  # signed, as SAEBench sums f
        positive = found.value > 0
        token, latent = found.token[positive], found.latent[positive]
        self.positive_counts += torch.bincount(latent, minlength=self.d_sae).cpu()
        fired = torch.zeros(found.n_tokens // sequence_length, self.d_sae, dtype=torch.bool, device=latent.device)
        fired[token // sequence_length, latent] = True  # each sequence in which a latent fired at all
        self.sequences_fired += fired.sum(0).cpu()

    def merge(self, other: SAEBenchSums) -> None:
        """Add another accumulator's sums (another torchrun rank's batches)."""
        self.batches += other.batches
        self.tokens += other.tokens
        for key in self.sums:
            self.sums[key] += other.sums[key]
        self.positive_counts += other.positive_counts
        self.sequences_fired += other.sequences_fired
        for key in self.kl:
            self.kl[key] += other.kl[key]
        self.kl_positions += other.kl_positions

    def result(self, d_in: int) -> tuple[dict[str, float | None], dict[str, torch.Tensor]]:
        """(SAEBench's scalar core metrics from these sums, per-latent arrays for the details file).

        A value SAEBench would compute as 0/0 is None here. The per-latent arrays are
        `saebench_feature_density` (f > 0) and `consistent_activation_heuristic` (NaN for a latent that
        never fired)."""
        values: dict[str, float | None] = dict.fromkeys(SUMS_KEYS)
        values.update(_kl_values(self.kl, self.kl_positions))
        density = self.positive_counts.double() / max(self.tokens, 1)
        per_latent = {
            "saebench_feature_density": density,
            "consistent_activation_heuristic": self.positive_counts.double() / self.sequences_fired.double(),
        }
        if self.tokens == 0:
            return values, per_latent
        s, T, B = self.sums, self.tokens, self.batches
        mean_sq_norm, mean_sq_error = s["batch_mean_sq_norm"] / B, s["batch_mean_sq_error"] / B
        total_variance = mean_sq_norm - (mean_sq_norm / d_in) ** 2
        values.update(
            {
                "explained_variance": 1.0 - mean_sq_error / total_variance if total_variance else None,
                "explained_variance_legacy": _finite(s["legacy_explained"] / T),
                "mse": s["batch_mean_sq_error"] / T,
                "l1": s["l1"] / T,
                "l2_norm_in": s["norm_in"] / T,
                "l2_norm_out": s["norm_out"] / T,
                "l2_ratio": s["l2_ratio"] / T,
                "relative_reconstruction_bias": _finite(s["batch_rrb"] / B),
            }
        )
        values.update(frequency_values(density))
        return values, per_latent


def frequency_values(density: torch.Tensor) -> dict[str, float]:
    """SAEBench's `calculate_misc_metrics` from per-latent densities: fractions of latents alive and above 1%
    and 10%, and the share of all firing done by the latents above 1% and 10% (0 when nothing fired)."""
    density = density.double()
    total = float(density.sum())
    values = {"frac_alive": float((density > 0).double().mean())}
    for label, threshold in (("1", 0.01), ("10", 0.1)):
        above = density > threshold
        values[f"freq_over_{label}_percent"] = float(above.double().mean())
        values[f"normalized_freq_over_{label}_percent"] = float(density[above].sum()) / total if total > 0 else 0.0
    return values


SUMS_KEYS = (
    "explained_variance",
    "explained_variance_legacy",
    "mse",
    "l1",
    "l2_norm_in",
    "l2_norm_out",
    "l2_ratio",
    "relative_reconstruction_bias",
    "kl_div_with_sae",
    "kl_div_with_ablation",
    "kl_div_score",
    "frac_alive",
    "freq_over_1_percent",
    "freq_over_10_percent",
    "normalized_freq_over_1_percent",
    "normalized_freq_over_10_percent",
)


@torch.no_grad()
def last_position_kl(readout, clean: torch.Tensor, zero: torch.Tensor, finals: Sequence[torch.Tensor], mask):
    """KL(P_clean ‖ P) at each sequence's last position, which SAEBench counts and saehealth's KL leaves out.

    clean, finals[i]: final residuals (batch, pos, d); zero: (batch or 1, pos, d); mask (batch, pos); `readout`
    a `metrics.downstream.Readout`. Returns the shared per-sequence totals (n_last, kl_zero_last) and, per
    SAE, (kl_sae_last): float64 (batch,) tensors to merge into `downstream_totals`' dictionaries.
    """
    weight = mask[:, -1].to(torch.float64)
    clean_log_p = torch.log_softmax(readout.logits(clean[:, -1]), dim=-1)
    p = clean_log_p.exp()

    def kl(final: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(readout.logits(final[:, -1]), dim=-1)
        return (p * (clean_log_p - log_q)).sum(-1).to(torch.float64) * weight

    return {"n_last": weight, "kl_zero_last": kl(zero)}, [{"kl_sae_last": kl(final)} for final in finals]


def _kl_values(kl: dict[str, float], positions: int) -> dict[str, float | None]:
    if positions == 0:
        return {}
    with_sae, with_ablation = kl["sae"] / positions, kl["zero"] / positions
    score = (with_ablation - with_sae) / with_ablation if with_ablation > 0 else None
    return {"kl_div_with_sae": with_sae, "kl_div_with_ablation": with_ablation, "kl_div_score": score}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
