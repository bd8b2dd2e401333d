"""Per-sequence totals and standard errors for ratio-of-sums metrics, in constant memory.

Every headline metric is a ratio of two sums over positions (e.g. loss recovered is
(ΣCE_zero − ΣCE_sae) / (ΣCE_zero − ΣCE_clean)). Positions inside one sequence are correlated, so
sequences are the independent units: we keep, per named quantity, the running sum over sequences of
its per-sequence total, and the running sum of products of every pair (a k×k matrix, k ≈ 12). That is
enough for the delta-method (cluster-robust) standard error of any ratio of linear combinations:

    R = Σ_i a_i / Σ_i b_i,   SE(R)² = n/(n−1) · Σ_i (a_i − R b_i)² / (Σ_i b_i)²

with a_i, b_i linear combinations of the per-sequence totals v_i.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


class SequenceTotals:
    """Running Σ_i v_i and Σ_i v_i v_iᵀ over sequences i, for a fixed list of named quantities."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        k = len(self.names)
        self.n_sequences = 0
        self.sums = torch.zeros(k, dtype=torch.float64)
        self.products = torch.zeros(k, k, dtype=torch.float64)

    def update(self, per_sequence: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: each name maps to a (batch,) tensor of per-sequence totals."""
        missing = set(self.names) - set(per_sequence)
        if missing:
            raise KeyError(f"per-sequence totals missing {sorted(missing)}")
        v = torch.stack([per_sequence[name].detach().to("cpu", torch.float64) for name in self.names], dim=1)
        self.n_sequences += v.shape[0]
        self.sums += v.sum(0)
        self.products += v.T @ v

    def merge(self, other: SequenceTotals) -> None:
        """Add another instance's sequences (another rank's share of the data)."""
        if other.names != self.names:
            raise ValueError(f"cannot merge totals of {other.names} into {self.names}")
        self.n_sequences += other.n_sequences
        self.sums += other.sums
        self.products += other.products

    def total(self, name: str) -> float:
        return float(self.sums[self.index[name]])

    def _vector(self, combination: Mapping[str, float]) -> torch.Tensor:
        coef = torch.zeros(len(self.names), dtype=torch.float64)
        for name, weight in combination.items():
            coef[self.index[name]] = weight
        return coef

    def ratio(self, numerator: Mapping[str, float], denominator: Mapping[str, float]) -> tuple[float, float]:
        """(Σa / Σb, its standard error), a and b given as {name: coefficient} combinations."""
        alpha, beta = self._vector(numerator), self._vector(denominator)
        num, den = float(alpha @ self.sums), float(beta @ self.sums)
        if den == 0:
            return math.nan, math.nan
        value = num / den
        n = self.n_sequences
        if n < 2:
            return value, math.nan
        residual = alpha - value * beta  # per-sequence a_i − R b_i = residualᵀ v_i
        sum_sq = float(residual @ self.products @ residual)
        variance = n / (n - 1) * max(sum_sq, 0.0) / den**2
        return value, math.sqrt(variance)

    def difference(
        self,
        first: tuple[Mapping[str, float], Mapping[str, float]],
        second: tuple[Mapping[str, float], Mapping[str, float]],
    ) -> tuple[float, float]:
        """(R₂ − R₁, its paired standard error) for two ratios R = Σa/Σb over the same sequences, each given as
        (numerator, denominator) combinations of these quantities (e.g. two SAEs' totals side by side).

        Delta method over sequences: the difference's influence of sequence i is
        (a₂ᵢ − R₂ b₂ᵢ)/Σb₂ − (a₁ᵢ − R₁ b₁ᵢ)/Σb₁, and SE² = n/(n−1) Σᵢ (that)²; what both ratios share per
        sequence (its length, its difficulty) cancels, which is why the paired SE is far below √(SE₁² + SE₂²)."""
        residual, values = torch.zeros(len(self.names), dtype=torch.float64), []
        for sign, (numerator, denominator) in ((-1.0, first), (1.0, second)):
            alpha, beta = self._vector(numerator), self._vector(denominator)
            den = float(beta @ self.sums)
            if den == 0:
                return math.nan, math.nan
            value = float(alpha @ self.sums) / den
            values.append(value)
            residual += sign * (alpha - value * beta) / den
        n = self.n_sequences
        if n < 2:
            return values[1] - values[0], math.nan
        variance = n / (n - 1) * max(float(residual @ self.products @ residual), 0.0)
        return values[1] - values[0], math.sqrt(variance)
