"""What every activation-cache reader provides: a description checked before anything runs, and batches.

A reader reads only headers when it is opened (widths, dtypes, token counts, whatever metadata the layout
keeps), so an unusable cache is refused before any SAE is run, and `batches()` then streams the
activations a batch of sequences at a time: memory is one batch, whatever the cache's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from saehealth.errors import DataError

# Activation dtypes a cache may hold; anything else (integer or 8-bit codes) is refused.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ActivationBatch(NamedTuple):
    """Consecutive sequences of one cache: x (batch, pos, d_in) in the cache's dtype, their token ids
    (batch, pos) when the cache keeps them, and where they came from (for error messages)."""

    x: torch.Tensor
    token_ids: torch.Tensor | None
    where: str


@dataclass
class CacheInfo:
    """What a cache says about itself, read from its headers and metadata."""

    path: Path
    layout: str  # "minsae" | "saelens" | "tensor"
    description: str  # for reports: "minSAE activation cache", ...
    d_in: int
    dtype: torch.dtype
    n_tokens: int
    # Tokens per sequence when the layout fixes it (None: blocks of --context-length, or the SAE's).
    sequence_length: int | None
    # True: the cache keeps sequences apart (a row is one sequence); False: it holds a flat stream of tokens,
    # cut into blocks of sequence_length consecutive tokens, which stand for sequences in standard errors.
    keeps_sequences: bool
    hook_name: str | None = None  # the TransformerLens hook the activations were read at, when recorded
    model_name: str | None = None
    has_token_ids: bool = False


class ActivationSource:
    """Base of the readers: `info` is filled when the cache is opened, `batches()` streams it."""

    info: CacheInfo

    def batches(self, batch_size: int, context: int) -> Iterator[ActivationBatch]:
        """Batches of `batch_size` sequences of `context` tokens (a flat cache's last block may be shorter)."""
        raise NotImplementedError


def torch_dtype(name: str, where: str) -> torch.dtype:
    """A floating dtype from its name (torch, numpy, safetensors or Arrow spelling); anything else is refused."""
    aliases = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
               "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool", "half": "float16", "float": "float32",
               "double": "float64"}  # fmt: skip
    name = aliases.get(name, name).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if dtype not in FLOAT_DTYPES:
        raise DataError(
            f"{where} holds {name} activations: saehealth reads float16, bfloat16, float32 or float64 caches "
            "(convert it, e.g. with numpy's astype)."
        )
    return dtype


def flat_batches(
    read: Callable[[int, int], torch.Tensor], n_tokens: int, context: int, batch_size: int, where: str
) -> Iterator[ActivationBatch]:
    """Blocks of `context` consecutive tokens of a flat (tokens, d_in) array, `batch_size` blocks at a time,
    read with `read(start, stop)`; a last, shorter block comes as a batch of its own."""
    step = context * batch_size
    whole = n_tokens - n_tokens % context
    for start in range(0, whole, step):
        stop = min(start + step, whole)
        rows = read(start, stop)
        yield ActivationBatch(rows.reshape(-1, context, rows.shape[-1]), None, where)
    if whole < n_tokens:
        rows = read(whole, n_tokens)
        yield ActivationBatch(rows.reshape(1, -1, rows.shape[-1]), None, where)
