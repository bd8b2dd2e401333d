"""Reconstruction metrics: explained variance, FVU, MSE, cosine, L2 ratio, relative reconstruction bias.

Definitions: ../shared/METRICS.md "Reconstruction". Everything is pooled over the T unmasked positions of
the whole evaluation (float64 running sums, divided once at the end), never averaged per batch.
"""

from __future__ import annotations

import torch

from saehealth.result import RECONSTRUCTION_KEYS


class ReconstructionAccumulator:
    """Streams (x, x̂, mask) batches; `result()` gives the reconstruction metrics."""

    def __init__(self, d_in: int):
        self.d_in = d_in
        self.tokens = 0
        self.sum_sq_error = 0.0
        # Variance is accumulated about a reference mean μ₀ (set_reference, else the first batch's), which keeps the
        # float64 sums well conditioned when activations carry a large common component; the exact
        # pooled variance is recovered at the end as Σ‖x−μ₀‖² − T‖μ−μ₀‖².
        self.reference: torch.Tensor | None = None
        self.sum_shifted = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_shifted = 0.0
        self.sum_cos = 0.0
        self.sum_l2_ratio = 0.0
        self.sum_sq_recon_norm = 0.0
        self.sum_dot = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add a batch: x, x_hat (batch, pos, d_in), mask (batch, pos). Returns per-sequence totals ("sse", "sst":
        (batch,)) and the per-position terms the by-position diagnostics bucket (metrics/positions.py): "sse_pos",
        "sst_pos" (batch, pos) and "shifted_pos" (pos, d_in), Σ over the batch of x − μ₀ at unmasked positions.

        Per-token reductions over d_in run in float32 (at least); everything summed across tokens is
        float64, which is where precision is lost on long evaluations.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        x, x_hat = x.to(dtype), x_hat.to(dtype)
        m = mask.to(torch.float64)
        if self.reference is None:
            self.set_reference(x, mask)
        shifted = x - self.reference.to(x.device, dtype)
        sq_error = (x - x_hat).pow(2).sum(-1).to(torch.float64) * m
        sq_shifted = shifted.pow(2).sum(-1).to(torch.float64) * m
        x_norm = x.norm(dim=-1).to(torch.float64)
        r_norm = x_hat.norm(dim=-1).to(torch.float64)
        dot = torch.linalg.vecdot(x, x_hat).to(torch.float64)
        cos = dot / (x_norm * r_norm).clamp(min=1e-12)
        ratio = r_norm / x_norm.clamp(min=1e-12)

        self.tokens += int(mask.sum())
        self.sum_sq_error += float(sq_error.sum())
        shifted_pos = (shifted * mask[..., None]).sum(0, dtype=torch.float64)
        self.sum_shifted += shifted_pos.sum(0).cpu()
        self.sum_sq_shifted += float(sq_shifted.sum())
        self.sum_cos += float((cos * m).sum())
        self.sum_l2_ratio += float((ratio * m).sum())
        self.sum_sq_recon_norm += float((r_norm.pow(2) * m).sum())
        self.sum_dot += float((dot * m).sum())
        return {
            "sse": sq_error.sum(1),
            "sst": sq_shifted.sum(1),
            "sse_pos": sq_error,
            "sst_pos": sq_shifted,
            "shifted_pos": shifted_pos,
        }

    def set_reference(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Use the mean of x (..., d_in) over the unmasked positions as the reference mean μ₀. The pooled metrics
        do not depend on it; the per-sequence variance totals behind explained variance's standard error do, so
        processes that share a pass must share it."""
        m = mask.to(torch.float64)
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        self.reference = (flat * m.reshape(-1, 1)).sum(0) / m.sum().clamp(min=1)

    def merge(self, other: ReconstructionAccumulator) -> None:
        """Add another accumulator's sums (another rank's share of the data), moving them to this reference mean:
        with d = μ_other − μ_self, Σ(x − μ_self) = Σ(x − μ_other) + T·d and
        Σ‖x − μ_self‖² = Σ‖x − μ_other‖² + 2 d·Σ(x − μ_other) + T‖d‖²."""
        if other.tokens == 0:
            return
        if self.reference is None:
            self.reference = other.reference.clone()
        shift = other.reference.to(torch.float64).cpu() - self.reference.to(torch.float64).cpu()
        self.sum_sq_shifted += (
            other.sum_sq_shifted + 2 * float(shift @ other.sum_shifted) + other.tokens * float(shift @ shift)
        )
        self.sum_shifted += other.sum_shifted + other.tokens * shift
        self.tokens += other.tokens
        for name in ("sum_sq_error", "sum_cos", "sum_l2_ratio", "sum_sq_recon_norm", "sum_dot"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def total_variance(self) -> float:
        """Σ_t ‖x_t − μ‖² over all unmasked positions, μ their mean."""
        if self.tokens == 0:
            return 0.0
        return self.sum_sq_shifted - float(self.sum_shifted.pow(2).sum()) / self.tokens

    def result(self) -> dict[str, float | None]:
        if self.tokens == 0:
            return dict.fromkeys(RECONSTRUCTION_KEYS)
        variance = self.total_variance()
        fvu = self.sum_sq_error / variance if variance > 0 else None
        return {
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "fvu": fvu,
            "mse": self.sum_sq_error / (self.tokens * self.d_in),
            "cossim": self.sum_cos / self.tokens,
            "l2_ratio": self.sum_l2_ratio / self.tokens,
            "relative_reconstruction_bias": self.sum_sq_recon_norm / self.sum_dot if self.sum_dot else None,
        }
