"""Decoder geometry: how redundant the dictionary is (SAEBench `average_max_decoder_cosine_sim`).

All-pairs cosines of d_sae vectors are d_sae² numbers (16 GiB at 65,536 latents), so they are never held at
once: `nearest_latents` walks blocks of rows against every row and keeps, per latent, only the largest (and
optionally the smallest) cosine and the latent it is reached with. The caller sizes the blocks from its memory
budget (`block_rows`; finishing passes the pass's own chunk size, `scoring.chunk_tokens`), so geometry never
needs more memory than one chunk tensor of the pass.

Reuse: `nearest_latents(vectors, with_min=True)` serves any (latents, d) matrix — decoder rows, encoder
columns (metrics/encoder_geometry.py) — and gives antipodal partners (cosine near -1) as well as duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saehealth.result import GEOMETRY_KEYS

NEAR_DUPLICATE_COSINE = 0.9
# Without a caller's budget, a block of cosines (block_rows × d_sae float32) holds at most 64 MiB: the size of
# one chunk tensor of the pass on a CPU (scoring.CHUNK_BYTES_CPU over its copies per latent).
DEFAULT_BLOCK_BYTES = 2**26


@dataclass(frozen=True)
class NearestLatents:
    """Per latent i (all (n,) tensors on the CPU): the largest cosine between vector i and any other vector,
    and which one (`max_index`); with `with_min`, the smallest cosine and which one. A tie goes to the lowest
    index. With a single vector there is no other one: cosines 0 and indices -1."""

    max_cosine: torch.Tensor  # float32
    max_index: torch.Tensor  # int64
    min_cosine: torch.Tensor | None = None  # float32, with_min only
    min_index: torch.Tensor | None = None  # int64, with_min only


def block_rows_for(d_sae: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that a block of float32 cosines against all `d_sae` vectors fits in `block_bytes`."""
    return max(1, block_bytes // (4 * max(1, d_sae)))


@torch.no_grad()
def nearest_latents(vectors: torch.Tensor, *, block_rows: int | None = None, with_min: bool = False) -> NearestLatents:
    """Each vector's most similar other vector by cosine (and, with `with_min`, its most opposite one).

    `vectors` is (n, d), one latent per row (W_dec, or W_enc.T). Rows are normalised once, then `block_rows`
    rows at a time are multiplied against all rows: memory is one (block_rows, n) float32 block beside the
    normalised copy, never n². Every block spans all columns, so the result does not depend on `block_rows`
    (ties: the lowest index, torch.max's rule)."""
    rows = torch.nn.functional.normalize(vectors.detach().float(), dim=-1)
    n = rows.shape[0]
    if n < 2:
        zeros, none = torch.zeros(n), torch.full((n,), -1, dtype=torch.int64)
        return NearestLatents(zeros, none, zeros.clone() if with_min else None, none.clone() if with_min else None)
    step = block_rows or block_rows_for(n)
    best = torch.empty(n, dtype=torch.float32, device=rows.device)
    best_index = torch.empty(n, dtype=torch.int64, device=rows.device)
    worst = torch.empty_like(best) if with_min else None
    worst_index = torch.empty_like(best_index) if with_min else None
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = rows[start:stop] @ rows.T  # (stop - start, n)
        diagonal = (torch.arange(stop - start, device=rows.device), torch.arange(start, stop, device=rows.device))
        block[diagonal] = -float("inf")  # a latent is not its own neighbour
        best[start:stop], best_index[start:stop] = block.max(dim=1)
        if with_min:
            block[diagonal] = float("inf")
            worst[start:stop], worst_index[start:stop] = block.min(dim=1)
        del block  # freed before the next block is allocated: one block alive at a time, not two
    return NearestLatents(
        best.cpu(),
        best_index.cpu(),
        worst.cpu() if with_min else None,
        worst_index.cpu() if with_min else None,
    )


def geometry_metrics(
    W_dec: torch.Tensor, *, block_rows: int | None = None
) -> tuple[dict[str, float | int | None], dict[str, torch.Tensor]]:
    """`decoder_redundancy` and `near_duplicate_latents`, plus per-latent arrays for the details file:
    `max_decoder_cosine` and `nearest_decoder_latent` (the latent it is most similar to). `block_rows` as in
    `nearest_latents`."""
    nearest = nearest_latents(W_dec, block_rows=block_rows)
    per_latent = {"max_decoder_cosine": nearest.max_cosine, "nearest_decoder_latent": nearest.max_index}
    if W_dec.shape[0] < 2:
        return dict.fromkeys(GEOMETRY_KEYS), per_latent
    best = nearest.max_cosine
    return {
        "decoder_redundancy": float(best.double().mean()),
        "near_duplicate_latents": int((best > NEAR_DUPLICATE_COSINE).sum()),
    }, per_latent
