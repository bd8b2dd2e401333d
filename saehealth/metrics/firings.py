"""The firings of a chunk of latent activations, found once for every accumulator that needs them.

A firing is a non-zero latent activation at an unmasked position. The sparsity statistics, SAEBench's sums
and the latent examples all start from the same (token, latent, value) triples, so the chunk is scanned once:
a dense (tokens, d_sae) tensor through one non-zero scan (the few masked rows cut out as index ranges), a
sparse COO tensor (what wide TopK SAEs hand over) straight from its indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_FEW_MASKED = 256  # masked tokens in a chunk up to which they are cut out as index ranges


@dataclass
class Firings:
    """Non-zero activations at unmasked positions of a chunk of `n_tokens` rows, ordered by (token, latent)."""

    token: torch.Tensor  # (nnz,) int64 row in the chunk
    latent: torch.Tensor  # (nnz,) int64
    value: torch.Tensor  # (nnz,) the activation
    n_tokens: int


def find_firings(feature_acts: torch.Tensor, mask: torch.Tensor) -> Firings:
    """The firings of `feature_acts` (tokens, d_sae), dense or sparse COO, at the positions where `mask`
    (tokens,) is True."""
    n = mask.shape[0]
    if feature_acts.is_sparse:
        acts = feature_acts.coalesce()
        token, latent = acts.indices()
        value = acts.values()
        keep = (value != 0) & mask[token]
        return Firings(token[keep], latent[keep], value[keep], n)
    d = feature_acts.shape[-1]
    flat = _nonzero(feature_acts.reshape(-1)).to(feature_acts.device)
    masked = (~mask).nonzero().squeeze(1)
    if 0 < masked.numel() <= _FEW_MASKED:
        flat = _without_rows(flat, masked, d)
    token = torch.div(flat, d, rounding_mode="floor")
    if masked.numel() > _FEW_MASKED:
        keep = mask[token].nonzero().squeeze(1)
        flat, token = flat[keep], token[keep]
    return Firings(token, flat - token * d, feature_acts.reshape(-1)[flat], n)


def _nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Indices of the non-zero entries of a 1-D tensor, ascending. On the CPU numpy's scan of a boolean
    array is the fastest (2x torch's, whose threads also contend on a busy machine)."""
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.flatnonzero(flat.numpy() != 0))
    return flat.nonzero().squeeze(1)


def _without_rows(flat: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """`flat` (ascending indices into a (tokens, width) array) without the entries in `rows`: the few masked
    tokens are cut out as index ranges, not by a gather over every entry."""
    starts = torch.searchsorted(flat, rows * width)
    ends = torch.searchsorted(flat, (rows + 1) * width)
    bounds = torch.stack([starts, ends], 1).reshape(-1).tolist()
    edges = [0, *bounds, flat.numel()]
    return torch.cat([flat[edges[i] : edges[i + 1]] for i in range(0, len(edges), 2)])
