"""Scoring SAEs on an activation cache: (x, mask) batches streamed from a reader into the SAEs' accumulators.

A cache is a second source of what the replay gives the accumulators: the activation x at the SAE's hook,
the mask of positions that count, and sequence boundaries (a batch's rows). No model runs, so there are no
downstream totals; everything else (reconstruction, sparsity, per-sequence totals for standard errors,
SAEBench's sums) is fed exactly as the replay feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saehealth.activations.source import ActivationSource
from saehealth.data import special_token_mask
from saehealth.errors import DataError
from saehealth.replay import SAEOutputs


@dataclass
class CacheData:
    """The cache an evaluation reads and how: the reader, the tokenizer whose BOS/EOS/PAD are left out of every
    average (None: every position counts) and the number of sequences to read (None: all)."""

    source: ActivationSource
    tokenizer: Any | None
    max_sequences: int | None


def cache_batches(
    data: CacheData, context: int, batch_size: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, mask) batches: x (batch, pos, d_in) in `dtype` on `device` (float16/bfloat16 caches are upcast as
    they are read), mask (batch, pos). Raises DataError at the first NaN or Inf, before it reaches an
    accumulator."""
    info, produced = data.source.info, 0
    for batch in data.source.batches(batch_size, context):
        x, tokens = batch.x, batch.token_ids
        if data.max_sequences is not None:
            left = data.max_sequences - produced
            if left <= 0:
                return
            x, tokens = x[:left], None if tokens is None else tokens[:left]
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"{info.path} ({batch.where}) holds NaN or Inf activations: regenerate the cache (nothing was written)."
            )
        if tokens is None or data.tokenizer is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        else:  # the replay's own mask, on the token ids the cache kept
            mask = special_token_mask(tokens, data.tokenizer)
        produced += x.shape[0]
        yield x.to(device=device, dtype=dtype), mask.to(device)


@torch.no_grad()
def score_activation_batches(
    scorers: Sequence,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    advance: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Feed every batch to every SAE's scorer (`evaluation.Scorer`: encode, decode, update) with no downstream
    totals; returns (sequences, tokens) read. `advance(n)` is told each batch's token count."""
    sequences = tokens = 0
    for x, mask in batches:
        for scorer in scorers:
            feature_acts = scorer.encode(x)
            x_hat = scorer.decode(feature_acts).to(x.dtype)
            scorer.update(SAEOutputs(x=x, x_hat=x_hat, feature_acts=feature_acts, final=None), None, mask)
        sequences += x.shape[0]
        tokens += mask.numel()
        if advance is not None:
            advance(mask.numel())
    return sequences, tokens
