"""Token-explained latents: the share of a latent's activation variance explained by the current token alone.

Definitions: docs/diagnostics.md. For latent l with activation a (zero where it does not fire) over the N scored
tokens, grouped by the token id t at each position (n_t positions, activation sum S_lt):

    share_l = (Σ_t S_lt² / n_t − S_l² / N) / (Σ a² − S_l² / N)

the between-token sum of squares over the total (the R² of a per-token mean). A latent at 1 is a token detector:
its activation is a function of the token, not of context. The pass keeps S_lt sparsely (only pairs where the
latent fired: a token where it never fires has S_lt = 0 and adds nothing), the token counts n_t, and per latent
Σa and Σa² (`metrics.dense_kinds.LatentPositionSums` already has them). All float64 sums: they merge exactly.
"""

from __future__ import annotations

import torch

from saehealth.metrics.firings import Firings

TOKEN_DETECTOR_SHARE = 0.9
_TOKEN_BITS = 32  # key = latent << 32 | token id: any vocabulary fits


class TokenSums:
    """Sparse per-(latent, token) activation sums and per-token counts over the scored positions."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.keys = torch.zeros(0, dtype=torch.int64)  # sorted, unique
        self.sums = torch.zeros(0, dtype=torch.float64)
        self.token_counts = torch.zeros(0, dtype=torch.int64)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_size = 0

    def update(self, found: Firings, token_ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a chunk: its firings, the token id at each of its rows (n_tokens,) and the rows' mask."""
        ids = token_ids.cpu().to(torch.int64)
        counted = torch.bincount(ids[mask.cpu()], minlength=self.token_counts.numel())
        if counted.numel() > self.token_counts.numel():
            counted[: self.token_counts.numel()] += self.token_counts
            self.token_counts = counted
        else:
            self.token_counts += counted
        keys = (found.latent.cpu() << _TOKEN_BITS) | ids[found.token.cpu()]
        self._pending.append((keys, found.value.cpu().to(torch.float64)))
        self._pending_size += keys.numel()
        if self._pending_size > max(self.keys.numel(), 2**20):  # amortised: the running set is re-sorted rarely
            self._coalesce()

    def _coalesce(self) -> None:
        if not self._pending:
            return
        keys = torch.cat([self.keys, *(k for k, _ in self._pending)])
        values = torch.cat([self.sums, *(v for _, v in self._pending)])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.sums = torch.zeros(self.keys.numel(), dtype=torch.float64).index_add_(0, inverse, values)
        self._pending, self._pending_size = [], 0

    def merge(self, other: TokenSums) -> None:
        other._coalesce()
        self._pending.append((other.keys, other.sums))
        self._pending_size += other.keys.numel()
        self._coalesce()
        width = max(self.token_counts.numel(), other.token_counts.numel())
        counts = torch.zeros(width, dtype=torch.int64)
        counts[: self.token_counts.numel()] += self.token_counts
        counts[: other.token_counts.numel()] += other.token_counts
        self.token_counts = counts

    def __getstate__(self) -> dict:  # torchrun ships tallies pickled: send the coalesced sums
        self._coalesce()
        return self.__dict__


def token_explained_share(sums: TokenSums, latent_sum: torch.Tensor, latent_sum_sq: torch.Tensor) -> torch.Tensor:
    """Per latent, the share of its activation variance explained by the token id (float32; NaN for a latent
    whose activation never varies, e.g. a dead one)."""
    sums._coalesce()
    n = float(sums.token_counts.sum())
    latent = sums.keys >> _TOKEN_BITS
    token = sums.keys & ((1 << _TOKEN_BITS) - 1)
    between = torch.zeros(sums.d_sae, dtype=torch.float64)
    between.index_add_(0, latent, sums.sums.pow(2) / sums.token_counts[token].to(torch.float64))
    mean_term = latent_sum.pow(2) / max(n, 1.0)
    total = latent_sum_sq - mean_term
    share = (between - mean_term) / total.clamp(min=1e-300)
    return torch.where(total > 1e-12 * latent_sum_sq.clamp(min=1e-300), share, torch.nan).float()


def token_explained_summary(share: torch.Tensor, density: torch.Tensor) -> dict:
    """The share of live latents whose activation is at least TOKEN_DETECTOR_SHARE explained by the token."""
    live = (density > 0) & ~share.isnan()
    detectors = live & (share >= TOKEN_DETECTOR_SHARE)
    n_live = int(live.sum())
    return {
        "bound": TOKEN_DETECTOR_SHARE,
        "live_latents": n_live,
        "token_detectors": int(detectors.sum()),
        "token_detector_fraction": int(detectors.sum()) / n_live if n_live else None,
        "median_share": float(share[live].median()) if n_live else None,
    }
