"""Scoring SAEs on an activation cache: (x, mask) batches streamed from a reader into the SAEs' accumulators.

A cache is a second source of what the replay gives the per-SAE scorers (`scoring.SAEScorer`): the activation x at the SAE's hook,
the mask of positions that count, and sequence boundaries (a batch's rows). No model runs, so there are no
downstream totals; everything else (reconstruction, sparsity, per-sequence totals for standard errors,
SAEBench's sums) is fed exactly as the replay feeds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
def score_cache(plans: Sequence, config, console=None) -> list | None:
    """One read of an activation cache for the SAEs of `plans` (`planning.Plan`s sharing the cache and its
    context), through the same per-SAE scorers as the replay, without downstream metrics. Returns one
    `scoring.PassOutput` per plan; under torchrun each rank scores every world_size-th batch and rank 0 gets the
    merged outputs (the other ranks None)."""
    from saehealth import distributed
    from saehealth.loading.files import DTYPES, parse_dtype
    from saehealth.progress import progress
    from saehealth.sae_scorer import SAEScorer

    first = plans[0]
    here = distributed.ranks()
    with distributed.step():
        scorers = [SAEScorer(plan.sae, config.device, config.examples) for plan in plans]
        dtype = DTYPES[parse_dtype(config.dtype)]
        batches = cache_batches(first.dataset, first.context, config.batch_size, config.device, dtype)
        total = len(range(here.rank, first.n_sequences, here.world_size)) * first.context
        try:
            with progress(console, total, "reading cache") as advance:
                for index, (x, mask) in enumerate(batches):
                    if index == 0:  # every rank reads batch 0: its first sequence is the shared reference mean
                        for scorer in scorers:
                            scorer.tally.reconstruction.set_reference(x[:1], mask[:1])
                            scorer.choose_pairs(x[:1], mask[:1])
                    if index % here.world_size != here.rank:
                        continue
                    ids = index * config.batch_size + torch.arange(x.shape[0], device=x.device)
                    for scorer in scorers:
                        scorer.begin(ids)
                        x_hat = scorer.reconstruct(x, mask).to(x.dtype)
                        scorer.update(SAEOutputs(x=x, x_hat=x_hat, final=None), None, mask)
                    advance(mask.numel())
        finally:
            for scorer in scorers:
                scorer.restore()
    merged = distributed.merge_on_first_rank([scorer.tally for scorer in scorers])
    return None if merged is None else [tally.output() for tally in merged]
