"""Sparsity and latent health: L0, L1, per-latent firing counts, dead and dense latents.

Definitions: ../shared/METRICS.md "Sparsity and feature health". A latent fires at a position when its
activation is non-zero (signed architectures count too); densities are c_i / T over unmasked positions.
"""

from __future__ import annotations

import math

import torch

from saehealth.metrics.firings import Firings, find_firings
from saehealth.result import SPARSITY_KEYS

DENSE_THRESHOLD = 0.1
DENSE_THRESHOLD_1PCT = 0.01


class SparsityAccumulator:
    """Streams latent activations; keeps firing counts and an L0 histogram (memory ∝ d_sae, not tokens)."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.tokens = 0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        self.firing_counts = torch.zeros(d_sae, dtype=torch.int64)
        self.l0_histogram = torch.zeros(d_sae + 1, dtype=torch.int64)

    def update(self, feature_acts: torch.Tensor, mask: torch.Tensor, firings: Firings | None = None) -> torch.Tensor:
        """Add latent activations (..., d_sae) at positions (...) with their mask (...): any chunk of tokens,
        dense or sparse COO (positions, d_sae). `firings`: the chunk's, when the caller has found them already.
        Returns each position's L0 (zero where masked), for per-sequence totals."""
        shape = mask.shape
        mask = mask.reshape(-1)
        if firings is None:
            acts = feature_acts if feature_acts.is_sparse else feature_acts.reshape(-1, self.d_sae)
            firings = find_firings(acts, mask)
        n = mask.shape[0]
        l0 = torch.bincount(firings.token, minlength=n)
        l1 = torch.zeros(n, dtype=torch.float64, device=l0.device)
        l1.index_add_(0, firings.token, firings.value.abs().to(torch.float64))
        self.tokens += int(mask.sum())
        self.sum_l0 += float(l0.sum())
        self.sum_l1 += float(l1.sum())
        self.firing_counts += torch.bincount(firings.latent, minlength=self.d_sae).cpu()
        self.l0_histogram += torch.bincount(l0[mask].cpu(), minlength=self.d_sae + 1)
        return l0.reshape(shape)

    def merge(self, other: SparsityAccumulator) -> None:
        """Add another accumulator's counts (another chunk of the data, or another rank's share)."""
        self.tokens += other.tokens
        self.sum_l0 += other.sum_l0
        self.sum_l1 += other.sum_l1
        self.firing_counts += other.firing_counts
        self.l0_histogram += other.l0_histogram

    def density(self) -> torch.Tensor:
        """Per-latent firing rate c_i / T (float64)."""
        return self.firing_counts.to(torch.float64) / max(self.tokens, 1)

    def result(self) -> dict[str, float | int | None]:
        if self.tokens == 0:
            return dict.fromkeys(SPARSITY_KEYS)
        density = self.density()
        dead = int((self.firing_counts == 0).sum())
        dense = int((density > DENSE_THRESHOLD).sum())
        return {
            "l0": self.sum_l0 / self.tokens,
            "l1": self.sum_l1 / self.tokens,
            "dead_features": dead,
            "dead_fraction": dead / self.d_sae,
            "dense_features": dense,
            "dense_fraction": dense / self.d_sae,
            "dense_features_1pct": int((density > DENSE_THRESHOLD_1PCT).sum()),
        }


def dead_rate_bound(tokens: int) -> float:
    """95% upper bound on the firing rate of a latent never seen firing in `tokens` positions (rule of three)."""
    return 3.0 / tokens if tokens > 0 else math.inf
