"""Token windows around latent firings, recovered from the evaluation's own sequences.

A result's settings (dataset, split, model's tokenizer, context length, number of sequences, seed) fix the
evaluation's token sequences exactly: `data.sequence_batches` yields them in the same order on every run, so
the latents file stores only each firing's sequence id and position, and the tokens are read back here.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from saehealth.errors import DataError
from saehealth.result import EvalResult


def window_bounds(position: int, length: int, radius: int) -> tuple[int, int]:
    """[start, end) of the ±radius window around `position` in a sequence of `length` tokens, cut at the
    sequence's start and end."""
    return max(0, position - radius), min(length, position + radius + 1)


def evaluation_sequences(result: EvalResult, up_to: int) -> torch.Tensor:
    """The evaluation's first `up_to` + 1 token sequences, (n, context_length) int32, in its own order.

    Raises a `SaeHealthError` when the dataset or tokenizer cannot be loaded, or the dataset now yields
    fewer sequences than the evaluation saw (it changed since)."""
    ev = result.eval
    wanted = min(up_to + 1, ev.n_sequences)
    sequences = _sequences(ev.model, ev.dataset, ev.split, ev.context_length, ev.seed, wanted, ev.prepend_bos)
    if sequences.shape[0] <= up_to:
        raise DataError(
            f"{ev.dataset} [{ev.split}] now yields {sequences.shape[0]} sequences of {ev.context_length} tokens, "
            f"fewer than the evaluation's {ev.n_sequences}: the dataset changed since; re-run the evaluation."
        )
    return sequences


@lru_cache(maxsize=4)
def _sequences(
    model: str, dataset: str, split: str, context: int, seed: int, wanted: int, prepend_bos: bool = True
) -> torch.Tensor:
    from saehealth.data import load_dataset, sequence_batches
    from saehealth.latents.tokens import load_tokenizer

    # Batch size only groups sequences: the first `wanted` are the evaluation's first `wanted`.
    rows, tokenizer = load_dataset(dataset, split), load_tokenizer(model)
    batches = [
        batch.to(torch.int32)
        for batch in sequence_batches(rows, tokenizer, context, wanted, 256, seed, prepend_bos=prepend_bos)
    ]
    if not batches:
        return torch.zeros(0, context, dtype=torch.int32)
    return torch.cat(batches)[:wanted]
