"""GPT-2's GELU in one kernel for the length of a pass.

TransformerLens computes GPT-2's `gelu_new` (and `gelu_fast`, the same function written differently) as
0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in seven element-wise operations, each a full pass over the
batch × d_mlp pre-activations. That is exactly torch's tanh-approximate GELU, which is one fused kernel: at
GPT-2-small's shape on a CPU it is 19 ms instead of 34 ms per block for 2,048 tokens, a few per cent of the whole
pass (docs/speed.md). The values differ from TransformerLens' by float rounding (≤ 5e-7 absolute for inputs of
standard deviation 3), well inside the replay's agreement with Hugging Face's forward.

The swap is scoped: `fused_gelu(model)` sets the fused function on the MLPs that use one of those two functions and
gives each its own back on exit, so a model the caller holds is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformer_lens.utilities import activation_functions

# The functions TransformerLens picks for GPT-2-style models: the tanh approximation of GELU, unfused.
_UNFUSED = tuple(
    fn for fn in (getattr(activation_functions, name, None) for name in ("gelu_new", "gelu_fast")) if fn is not None
)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), fused."""
    return F.gelu(x, approximate="tanh")


@contextmanager
def fused_gelu(model) -> Iterator[int]:
    """For the `with` block, every MLP of `model` whose activation is `gelu_new` or `gelu_fast` computes it with
    `gelu_tanh`; yields how many MLPs were swapped. Models without TransformerLens blocks are left alone."""
    swapped = []
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        own = getattr(mlp, "act_fn", None)
        if any(own is fn for fn in _UNFUSED):
            swapped.append((mlp, own))
            mlp.act_fn = gelu_tanh
    try:
        yield len(swapped)
    finally:
        for mlp, own in swapped:
            mlp.act_fn = own
