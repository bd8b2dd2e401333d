"""By position: explained variance, L0, ΔCE and KL per token position, in log-spaced buckets.

Definitions: ../shared/METRICS.md "Diagnostics beyond the averages" and docs/diagnostics.md. Position p (0-based,
in the sequence as fed to the model) falls in bucket ⌊log2(p + 1)⌋: positions 1, 2–3, 4–7, 8–15, … counted from 1.
Every quantity is a float64 sum per bucket, divided once at the end, and merges exactly across torchrun ranks.

Explained variance in a bucket is 1 − Σ_b‖x − x̂‖² / Σ_b‖x − μ‖² with μ the mean of *all* scored positions (not the
bucket's own mean, which is a constant vector at position 1 when that is BOS): the buckets' denominators then add
up to the whole evaluation's total variance, so the buckets decompose the overall FVU. ΔCE and KL per bucket are
over the bucket's predicting positions (a position predicts the next token: the last position is never one).
"""

from __future__ import annotations

import math

import torch

MAX_BUCKETS = 32  # positions up to 2^32: any context a model can be run at


def position_buckets(n_positions: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The bucket ⌊log2(p + 1)⌋ of each position p = 0 … n_positions − 1: (n_positions,) int64."""
    positions = torch.arange(1, n_positions + 1, device=device, dtype=torch.float64)
    return torch.floor(torch.log2(positions)).to(torch.int64)


def bucket_label(bucket: int, length: int | None = None) -> str:
    """'1', '2–3', '4–7', …: the 1-based positions in a bucket (the last one ends at `length`)."""
    first, last = 2**bucket, 2 ** (bucket + 1) - 1
    last = last if length is None else min(last, length)
    return str(first) if first == last else f"{first}–{last}"


def _by_bucket(per_position: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """Sum a (pos,) or (pos, d) float tensor into (MAX_BUCKETS,) or (MAX_BUCKETS, d) float64 on the CPU."""
    out = torch.zeros((MAX_BUCKETS, *per_position.shape[1:]), dtype=torch.float64, device=per_position.device)
    out.index_add_(0, buckets[: per_position.shape[0]], per_position.to(torch.float64))
    return out.cpu()


class PositionAccumulator:
    """Per-bucket float64 sums of one SAE: tokens, squared error, squared deviation from a reference mean μ₀ (and
    the deviations themselves, to move to the global mean at the end), L0, and the downstream CE/KL sums."""

    SCALARS = ("tokens", "sse", "sst", "l0", "n_pred", "ce_clean", "ce_sae", "kl_sae")

    def __init__(self, d_in: int):
        self.d_in = d_in
        for name in self.SCALARS:
            setattr(self, name, torch.zeros(MAX_BUCKETS, dtype=torch.float64))
        self.shifted = torch.zeros(MAX_BUCKETS, d_in, dtype=torch.float64)
        self.reference: torch.Tensor | None = None  # μ₀: the reconstruction accumulator's, shared by the ranks
        self.length = 0  # the longest sequence seen: the last bucket ends there

    def update_reconstruction(
        self, per_position: dict[str, torch.Tensor], mask: torch.Tensor, l0: torch.Tensor, reference: torch.Tensor
    ) -> None:
        """Add a batch's per-position reconstruction terms: `per_position` holds "sse_pos", "sst_pos" (batch, pos)
        (masked, about μ₀) and "shifted_pos" (pos, d) (Σ over the batch of x − μ₀ at unmasked positions); `l0`
        (batch, pos) is zero where masked."""
        if self.reference is None:
            self.reference = reference.detach().to("cpu", torch.float64).clone()
        buckets = position_buckets(mask.shape[1], mask.device)
        self.length = max(self.length, mask.shape[1])
        self.tokens += _by_bucket(mask.sum(0), buckets)
        self.sse += _by_bucket(per_position["sse_pos"].sum(0), buckets)
        self.sst += _by_bucket(per_position["sst_pos"].sum(0), buckets)
        self.shifted += _by_bucket(per_position["shifted_pos"], buckets)
        self.l0 += _by_bucket(l0.sum(0), buckets)

    def update_downstream(self, per_position: dict[str, torch.Tensor]) -> None:
        """Add a batch's per-position downstream sums over its sequences: "n_pred", "ce_clean", "ce_sae",
        "kl_sae", each (pos − 1,) (`metrics.downstream.downstream_totals`'s "by_position")."""
        buckets = position_buckets(per_position["n_pred"].shape[0] + 1, per_position["n_pred"].device)
        for name in ("n_pred", "ce_clean", "ce_sae", "kl_sae"):
            setattr(self, name, getattr(self, name) + _by_bucket(per_position[name], buckets))

    def merge(self, other: PositionAccumulator) -> None:
        """Add another rank's sums, moving its variance terms to this reference mean (as the reconstruction
        accumulator does): with d = μ_other − μ_self, Σ(x − μ_self) = Σ(x − μ_other) + T_b·d and
        Σ‖x − μ_self‖² = Σ‖x − μ_other‖² + 2 d·Σ(x − μ_other) + T_b‖d‖², per bucket."""
        if other.reference is not None and self.reference is None:
            self.reference = other.reference.clone()
        if other.reference is not None:
            d = other.reference - self.reference
            self.sst += other.sst + 2 * (other.shifted @ d) + other.tokens * float(d @ d)
            self.shifted += other.shifted + other.tokens[:, None] * d
        self.length = max(self.length, other.length)
        for name in self.SCALARS:
            if name != "sst":
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def result(self) -> dict | None:
        """Per-bucket lists up to the last bucket with a scored token (None without any): labels, first and last
        1-based position, tokens, explained variance, L0, and (with a model) ΔCE and KL; a value is None where its
        bucket has nothing to divide by."""
        filled = (self.tokens > 0).nonzero()
        if filled.numel() == 0:
            return None
        n = int(filled.max()) + 1
        total = float(self.tokens.sum())
        delta = self.shifted.sum(0) / total  # μ − μ₀
        variance = self.sst - 2 * (self.shifted @ delta) + self.tokens * float(delta @ delta)
        out = {
            "buckets": [bucket_label(b, self.length) for b in range(n)],
            "first_position": [2**b for b in range(n)],
            "last_position": [min(2 ** (b + 1) - 1, self.length) for b in range(n)],
            "tokens": [int(t) for t in self.tokens[:n]],
            "explained_variance": [_ratio(1, -self.sse[b], variance[b]) for b in range(n)],
            "l0": [_ratio(0, self.l0[b], self.tokens[b]) for b in range(n)],
        }
        if float(self.n_pred.sum()) > 0:
            out["predicting"] = [int(t) for t in self.n_pred[:n]]
            out["delta_ce"] = [_ratio(0, self.ce_sae[b] - self.ce_clean[b], self.n_pred[b]) for b in range(n)]
            out["kl_div"] = [_ratio(0, self.kl_sae[b], self.n_pred[b]) for b in range(n)]
        return out


def _ratio(offset: float, numerator, denominator) -> float | None:
    """offset + numerator / denominator as a float, None when the denominator is not positive."""
    den = float(denominator)
    if den <= 0:
        return None
    value = offset + float(numerator) / den
    return value if math.isfinite(value) else None
