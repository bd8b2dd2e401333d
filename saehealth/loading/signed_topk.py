"""The RouteSAEs authors' TopK: the k largest pre-activations kept with their sign (no ReLU).

`swei2001/RouteSAEs` `TopK.encode`: pre = encoder(x − pre_bias) + latent_bias; the top-k values are scattered
into zeros as they are, negative ones included. SAELens' `TopK` applies a ReLU to the top-k values, so the two
differ whenever a top-k pre-activation is negative; this subclass keeps the sign. Registered with SAELens so
that `save_model`/`load_from_disk` round-trip it while saehealth is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sae_lens import register_sae_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import nn
from typing_extensions import override

SIGNED_TOPK = "signed_topk"


class SignedTopK(nn.Module):
    """Keep the k largest values along the last dimension, sign included; zero the rest."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(x).scatter_(-1, indices, values)


@dataclass
class SignedTopKSAEConfig(TopKSAEConfig):
    """A TopK SAE whose top-k activations keep their sign (the RouteSAEs authors' TopK)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return SIGNED_TOPK


class SignedTopKSAE(TopKSAE):
    """SAELens `TopKSAE` with `SignedTopK` instead of TopK-then-ReLU."""

    cfg: SignedTopKSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return SignedTopK(self.cfg.k)


if SIGNED_TOPK not in SAE_CLASS_REGISTRY:  # re-importing (importlib.reload in tests) must not trip the check
    register_sae_class(SIGNED_TOPK, SignedTopKSAE, SignedTopKSAEConfig)
