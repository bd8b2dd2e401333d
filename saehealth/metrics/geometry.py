"""Decoder geometry: how redundant the dictionary is (SAEBench `average_max_decoder_cosine_sim`)."""

from __future__ import annotations

import torch

from saehealth.result import GEOMETRY_KEYS

NEAR_DUPLICATE_COSINE = 0.9


# Memory for one block of cosines (chunk × d_sae float32): 256 MiB, whatever d_sae.
BLOCK_BYTES = 2**28


@torch.no_grad()
def nearest_decoder_latents(W_dec: torch.Tensor, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each latent, the largest cosine between its decoder row and any other latent's, and that other
    latent: ((d_sae,) float32, (d_sae,) int64).

    Computed in row chunks so memory is chunk × d_sae rather than d_sae² (at 131k latents a 4,096-row chunk
    alone would take 2 GiB): by default a chunk holds BLOCK_BYTES of cosines.
    """
    rows = torch.nn.functional.normalize(W_dec.detach().float(), dim=-1)
    d_sae = rows.shape[0]
    chunk_size = chunk_size or max(1, BLOCK_BYTES // (4 * d_sae))
    best = torch.empty(d_sae, dtype=torch.float32, device=rows.device)
    nearest = torch.empty(d_sae, dtype=torch.int64, device=rows.device)
    for start in range(0, d_sae, chunk_size):
        block = rows[start : start + chunk_size] @ rows.T  # (chunk, d_sae)
        idx = torch.arange(block.shape[0], device=rows.device)
        block[idx, start + idx] = -float("inf")  # a latent is not its own duplicate
        best[start : start + chunk_size], nearest[start : start + chunk_size] = block.max(dim=1)
    return best.cpu(), nearest.cpu()


def max_decoder_cosine(W_dec: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """For each latent, the largest cosine between its decoder row and any other latent's: (d_sae,)."""
    return nearest_decoder_latents(W_dec, chunk_size)[0]


def geometry_metrics(W_dec: torch.Tensor) -> tuple[dict[str, float | int], dict[str, torch.Tensor]]:
    """`decoder_redundancy` and `near_duplicate_latents`, plus per-latent arrays for the details file:
    `max_decoder_cosine` and `nearest_decoder_latent` (the latent it is most similar to)."""
    if W_dec.shape[0] < 2:
        d_sae = W_dec.shape[0]
        per_latent = {"max_decoder_cosine": torch.zeros(d_sae), "nearest_decoder_latent": torch.full((d_sae,), -1)}
        return dict.fromkeys(GEOMETRY_KEYS), per_latent
    best, nearest = nearest_decoder_latents(W_dec)
    return {
        "decoder_redundancy": float(best.double().mean()),
        "near_duplicate_latents": int((best > NEAR_DUPLICATE_COSINE).sum()),
    }, {"max_decoder_cosine": best, "nearest_decoder_latent": nearest}
