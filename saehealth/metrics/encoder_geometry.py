"""Per-latent encoder statistics (SAEBench's featurewise weight-based metrics): encoder norms and biases,
encoder–decoder cosines, and each latent's largest encoder cosine to another latent."""

from __future__ import annotations

import torch

from saehealth.metrics.geometry import nearest_latents


@torch.no_grad()
def encoder_geometry(sae, *, block_rows: int | None = None) -> dict[str, torch.Tensor]:
    """(d_sae,) float32 arrays: `encoder_norm` (‖W_enc[:, i]‖), `encoder_bias` (b_enc; b_mag for gated SAEs,
    as SAEBench reports them; zeros without either), `encoder_decoder_cosine` (cos(W_enc[:, i], W_dec[i])) and
    `max_encoder_cosine` (the largest cosine between latent i's encoder column and any other latent's, in blocks
    of `block_rows` latents as geometry.nearest_latents computes them)."""
    W_enc = sae.W_enc.detach().float()  # (d_in, d_sae)
    W_dec = sae.W_dec.detach().float()  # (d_sae, d_in)
    bias = getattr(sae, "b_mag", None)
    if bias is None:
        bias = getattr(sae, "b_enc", None)
    if bias is None:
        bias = torch.zeros(W_enc.shape[1])
    columns = W_enc.T
    return {
        "encoder_norm": columns.norm(dim=-1).cpu(),
        "encoder_bias": bias.detach().float().cpu(),
        "encoder_decoder_cosine": torch.nn.functional.cosine_similarity(columns, W_dec, dim=-1).cpu(),
        # The decoder's routine takes any (latents, d) matrix: rows are normalised, self-pairs excluded.
        "max_encoder_cosine": nearest_latents(columns, block_rows=block_rows).max_cosine,
    }
