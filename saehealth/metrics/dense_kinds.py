"""What dense latents are: position-tracking, antipodal pair, first-token, or unexplained.

Definitions: docs/diagnostics.md. A latent is dense when it fires on more than 10% of the scored tokens
(`metrics.sparsity.DENSE_THRESHOLD`). Before it is called a defect it is classified, first match wins:

- `first_token`: at least FIRST_TOKEN_SHARE of its summed activation is at position 1 (the BOS when the
  evaluation includes special tokens, else the first token of each sequence);
- `position`: its activation is explained by position: R² of the activation on the position buckets
  (metrics/positions.py; between-bucket sum of squares over the total) is at least POSITION_R2;
- `antipodal`: another latent's decoder row has cosine below ANTIPODAL_COSINE with its own, and the two fire
  together on at most COFIRING_SHARE of the rarer one's firings (complementary: one or the other, not both);
- `unexplained`: none of these.

The pass accumulates, from each chunk's firings (`metrics/firings.py`): per (latent, position bucket) the summed
activation, per latent the summed squared activation, and for the antipodal candidate pairs how often both fire
on one token. All float64 / int64 sums: they merge exactly. The candidates are chosen before the pass from the
reference sequence every torchrun rank shares (`scoring._set_references`): the latents firing on at least
CANDIDATE_DENSITY of its tokens, each paired with its most opposite decoder row — so the decoder cosines cost
candidates × d_sae, not d_sae². A dense latent that happened to fire less on that one sequence has no partner
counted and stays unexplained (the conservative side).
"""

from __future__ import annotations

import torch

from saehealth.metrics.firings import Firings
from saehealth.metrics.positions import MAX_BUCKETS, position_buckets

FIRST_TOKEN_SHARE = 0.5
POSITION_R2 = 0.5
ANTIPODAL_COSINE = -0.9
COFIRING_SHARE = 0.05
CANDIDATE_DENSITY = 0.05  # on the reference sequence: half the dense threshold, for a sequence's noise
KINDS = ("first_token", "position", "antipodal", "unexplained")
LISTED = 100  # latents listed per kind in result.json (every latent's kind is in the details file)
_BLOCK_BYTES = 2**28  # memory for one block of decoder cosines, as metrics/geometry.py


@torch.no_grad()
def most_opposite_decoder_latents(
    W_dec: torch.Tensor, latents: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of `latents` (default: all), the smallest cosine between its decoder row and another latent's, and
    that latent: ((n,) float32, (n,) int64), in row blocks of bounded memory (as metrics/geometry.py's largest)."""
    rows = torch.nn.functional.normalize(W_dec.detach().float(), dim=-1)
    d_sae = rows.shape[0]
    latents = torch.arange(d_sae, device=rows.device) if latents is None else latents.to(rows.device)
    step = max(1, _BLOCK_BYTES // (4 * d_sae))
    lowest = torch.empty(latents.numel(), dtype=torch.float32, device=rows.device)
    partner = torch.empty(latents.numel(), dtype=torch.int64, device=rows.device)
    for start in range(0, latents.numel(), step):
        chosen = latents[start : start + step]
        block = rows[chosen] @ rows.T
        block[torch.arange(chosen.numel(), device=rows.device), chosen] = float("inf")  # not itself
        lowest[start : start + step], partner[start : start + step] = block.min(dim=1)
    return lowest.cpu(), partner.cpu()


def antipodal_pairs(W_dec: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 2) int64 pairs (i < j) whose decoder rows have cosine below ANTIPODAL_COSINE, each of `latents`
    (default: all) with its most opposite partner."""
    if W_dec.shape[0] < 2 or (latents is not None and latents.numel() == 0):
        return torch.zeros(0, 2, dtype=torch.int64)
    lowest, partner = most_opposite_decoder_latents(W_dec, latents)
    chosen = torch.arange(W_dec.shape[0]) if latents is None else latents.cpu()
    first = chosen[lowest < ANTIPODAL_COSINE]
    partner = torch.full((W_dec.shape[0],), -1, dtype=torch.int64).index_put_((chosen,), partner)
    pairs = torch.stack([torch.minimum(first, partner[first]), torch.maximum(first, partner[first])], 1)
    return torch.unique(pairs, dim=0) if pairs.numel() else pairs


class LatentPositionSums:
    """Per (latent, position bucket) Σa, per latent Σa², and the co-firing counts of the antipodal pairs."""

    def __init__(self, d_sae: int, pairs: torch.Tensor | None = None):
        self.d_sae = d_sae
        self.bucket_sums = torch.zeros(d_sae, MAX_BUCKETS, dtype=torch.float64)
        self.sum_sq = torch.zeros(d_sae, dtype=torch.float64)
        self.set_pairs(torch.zeros(0, 2, dtype=torch.int64) if pairs is None else pairs)

    def set_pairs(self, pairs: torch.Tensor) -> None:
        """The antipodal candidate pairs whose co-firings are counted (before the first update)."""
        self.pairs = pairs
        self.cofirings = torch.zeros(pairs.shape[0], dtype=torch.int64)
        self._candidate = torch.full((self.d_sae,), -1, dtype=torch.int64)  # latent → column among the paired
        self._paired = torch.unique(pairs.reshape(-1)) if pairs.numel() else pairs.reshape(-1)
        self._candidate[self._paired] = torch.arange(self._paired.numel())

    def update(self, found: Firings, first_row: int, length: int) -> None:
        """Add a chunk's firings; row r of the chunk is position (first_row + r) mod `length` of its sequence."""
        device = found.latent.device
        buckets = position_buckets(length, device)[(first_row + found.token) % length]
        value = found.value.to(torch.float64)
        flat = self.bucket_sums.view(-1)
        flat.index_add_(0, (found.latent * MAX_BUCKETS + buckets).cpu(), value.cpu())
        self.sum_sq.index_add_(0, found.latent.cpu(), value.pow(2).cpu())
        if self.pairs.numel():
            column = self._candidate[found.latent.cpu()]
            kept = column >= 0
            fired = torch.zeros(found.n_tokens, self._paired.numel(), dtype=torch.bool)
            fired[found.token.cpu()[kept], column[kept]] = True
            a, b = self._candidate[self.pairs[:, 0]], self._candidate[self.pairs[:, 1]]
            self.cofirings += (fired[:, a] & fired[:, b]).sum(0)

    def merge(self, other: LatentPositionSums) -> None:
        if not torch.equal(self.pairs, other.pairs):  # chosen from the shared reference sequence: never differs
            raise ValueError("cannot merge co-firing counts of different antipodal candidate pairs")
        self.bucket_sums += other.bucket_sums
        self.sum_sq += other.sum_sq
        self.cofirings += other.cofirings


def position_r2(bucket_sums: torch.Tensor, sum_sq: torch.Tensor, bucket_tokens: torch.Tensor) -> torch.Tensor:
    """Per latent, R² of its activation (zero where it does not fire) on the position bucket: the between-bucket
    sum of squares Σ_b S_b²/n_b − S²/N over the total Σa² − S²/N; NaN for a latent that never varies."""
    tokens = bucket_tokens.to(torch.float64)
    n = float(tokens.sum())
    total_sum = bucket_sums.sum(1)
    filled = tokens > 0
    between = (bucket_sums[:, filled].pow(2) / tokens[filled]).sum(1) - total_sum.pow(2) / n
    total = sum_sq - total_sum.pow(2) / n
    return torch.where(total > 0, between / total.clamp(min=1e-300), torch.full_like(total, float("nan")))


def classify_dense(
    density: torch.Tensor,
    firing_counts: torch.Tensor,
    sums: LatentPositionSums,
    bucket_tokens: torch.Tensor,
    dense_threshold: float,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The kind of every dense latent: ({"counts": {kind: n}, "latents": {kind: [first LISTED ids, densest
    first]}, "bounds": …},
    per-latent arrays for the details file: `dense_kind` (−1 not dense, else the index in KINDS),
    `position_r2`, `antipodal_partner` (−1 without one)."""
    r2 = position_r2(sums.bucket_sums, sums.sum_sq, bucket_tokens)
    total = sums.bucket_sums.sum(1)
    first_share = torch.where(total > 0, sums.bucket_sums[:, 0] / total.clamp(min=1e-300), torch.zeros_like(total))
    partner = torch.full((sums.d_sae,), -1, dtype=torch.int64)
    counts = firing_counts.to(torch.int64)
    for (i, j), together in zip(sums.pairs.tolist(), sums.cofirings.tolist(), strict=True):
        rarer = min(int(counts[i]), int(counts[j]))
        if rarer > 0 and together <= COFIRING_SHARE * rarer:
            partner[i], partner[j] = j, i
    kind = torch.full((sums.d_sae,), -1, dtype=torch.int64)
    dense = density > dense_threshold
    checks = (first_share >= FIRST_TOKEN_SHARE, r2 >= POSITION_R2, partner >= 0)
    for index, test in enumerate(checks):
        kind[dense & (kind < 0) & test] = index
    kind[dense & (kind < 0)] = KINDS.index("unexplained")
    summary = {
        "counts": {name: int((kind == i).sum()) for i, name in enumerate(KINDS)},
        "latents": {name: _densest(kind == i, density) for i, name in enumerate(KINDS)},
        "bounds": {
            "dense_density": dense_threshold,
            "first_token_share": FIRST_TOKEN_SHARE,
            "position_r2": POSITION_R2,
            "antipodal_cosine": ANTIPODAL_COSINE,
            "cofiring_share": COFIRING_SHARE,
        },
    }
    return summary, {"dense_kind": kind, "position_r2": r2.float(), "antipodal_partner": partner}


def _densest(selected: torch.Tensor, density: torch.Tensor) -> list[int]:
    """The LISTED densest latents among `selected`, densest first."""
    ids = selected.nonzero().squeeze(1)
    return ids[density[ids].argsort(descending=True, stable=True)][:LISTED].tolist()


def candidate_pairs(W_dec: torch.Tensor, feature_acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The antipodal candidate pairs of the latents firing on at least CANDIDATE_DENSITY of the unmasked rows of
    `feature_acts` (tokens, d_sae), dense or sparse: the reference sequence's (see the module docstring)."""
    acts = feature_acts.to_dense() if feature_acts.is_sparse else feature_acts
    kept = acts[mask.reshape(-1)]
    if kept.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.int64)
    share = (kept != 0).float().mean(0)
    return antipodal_pairs(W_dec, (share >= CANDIDATE_DENSITY).nonzero().squeeze(1))
