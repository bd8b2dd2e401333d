"""SAELens SAE subclasses for math that stock SAELens has no exact class for.

Each class overrides as little as possible of a stock SAELens class so that `encode`/`decode` reproduce the
source library's forward exactly:

- `GroupMax`: EleutherAI sparsify's "groupmax" activation (ReLU, then the maximum of each of k equal groups).
- `SparsifySAE`: a `TopKSAE` with sparsify's optional groupmax activation and linear skip connection.
- `SparsifyTranscoder`: a SAELens `Transcoder` with sparsify's TopK/groupmax activation and optional skip.
- `SeedJumpReLUSAE`: JumpReLU without the ReLU, p·[p > threshold], as home-grown BaseSAE JumpReLUs compute it
  (equal to SAELens `jumprelu` when every threshold is ≥ 0; it differs, and is needed, when one is negative).

A skip connection adds `x @ W_skip.T` to the output, which depends on the input `x`, not only on the latents.
Like SAELens' own `layer_norm` normalisation (which keeps the input's mean and std between `encode` and
`decode`), these classes remember the input of the last `encode` and `decode` consumes it: call `sae(x)` or
`sae.decode(sae.encode(x))` on the same batch. The classes are registered with SAELens, so `save_model` and
`SAE.load_from_disk` round-trip them while saehealth is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens import register_sae_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopK, TopKSAE, TopKSAEConfig, act_times_W_dec
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig
from sae_lens.util import filter_valid_dataclass_fields
from torch import nn
from typing_extensions import override


class GroupMax(nn.Module):
    """ReLU, then keep only the largest activation in each of `k` equal, contiguous groups of latents."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = x.relu()
        d_sae = acts.shape[-1]
        values, index_in_group = acts.unflatten(-1, (self.k, d_sae // self.k)).max(dim=-1)
        offsets = torch.arange(0, d_sae, d_sae // self.k, device=acts.device)
        result = torch.zeros_like(acts)
        return result.scatter_(-1, index_in_group + offsets, values)


def _activation(kind: str, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "groupmax":
        return GroupMax(k)
    return TopK(k)


class _SparsifyCoder:
    """What sparsify's SAE and transcoder share, placed before the SAELens base class: the topk/groupmax
    activation, and the optional linear skip connection, whose term needs the raw input of the last `encode`
    (remembered there, consumed by `decode`)."""

    cfg: Any
    W_skip: nn.Parameter
    _skip_input: torch.Tensor | None = None

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        if self.cfg.skip_connection:
            d_out = getattr(self.cfg, "d_out", self.cfg.d_in)  # transcoders write another space
            self.W_skip = nn.Parameter(torch.zeros(d_out, self.cfg.d_in, dtype=self.dtype, device=self.device))

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _activation(self.cfg.activation, self.cfg.k)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.skip_connection:
            self._skip_input = x.to(self.dtype)
        return super().encode(x)  # type: ignore[misc]

    def _skip_term(self, feature_acts: torch.Tensor) -> torch.Tensor:
        x = self._skip_input
        if x is None or x.shape[:-1] != feature_acts.shape[:-1]:
            raise RuntimeError(
                "This SAE has a linear skip connection, so decode() needs the input of the encode() call that "
                "produced these latents: call sae(x) or sae.decode(sae.encode(x)) on the same batch."
            )
        self._skip_input = None
        return x.to(self.W_skip.dtype) @ self.W_skip.T


@dataclass
class SparsifySAEConfig(TopKSAEConfig):
    """A sparsify autoencoder: `k` is the number of active latents (topk) or of groups (groupmax)."""

    activation: Literal["topk", "groupmax"] = "topk"
    skip_connection: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return "sparsify"


class SparsifySAE(_SparsifyCoder, TopKSAE):
    """sparsify's SAE: relu(W_enc (x - b_dec) + b_enc) -> topk/groupmax -> W_dec + b_dec (+ W_skip x)."""

    cfg: SparsifySAEConfig  # type: ignore[assignment]

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out_pre = act_times_W_dec(feature_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm) + self.b_dec
        if self.cfg.skip_connection:
            sae_out_pre = sae_out_pre + self._skip_term(feature_acts)
        sae_out_pre = self.hook_sae_recons(sae_out_pre)
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)
        return self.reshape_fn_out(sae_out_pre, self.d_head)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("Folding decoder norms would change which latents a sparsify SAE selects.")


@dataclass
class SparsifyTranscoderConfig(TranscoderConfig):
    """A sparsify transcoder (`transcode=true`): encodes a module's input, decodes its output."""

    apply_b_dec_to_input: bool = False  # b_dec lives in the output space; sparsify never subtracts it
    k: int = 32
    activation: Literal["topk", "groupmax"] = "topk"
    skip_connection: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return "sparsify_transcoder"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> SparsifyTranscoderConfig:
        res = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
        return res

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "k": self.k,
            "activation": self.activation,
            "skip_connection": self.skip_connection,
        }


class SparsifyTranscoder(_SparsifyCoder, Transcoder):
    """sparsify's transcoder: relu(W_enc x + b_enc) -> topk/groupmax -> W_dec + b_dec (+ W_skip x); no b_dec on input."""

    cfg: SparsifyTranscoderConfig  # type: ignore[assignment]

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out = feature_acts @ self.W_dec + self.b_dec
        if self.cfg.skip_connection:
            sae_out = sae_out + self._skip_term(feature_acts)
        return self.hook_sae_recons(sae_out)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> SparsifyTranscoder:
        return cls(SparsifyTranscoderConfig.from_dict(config_dict))


@dataclass
class SeedJumpReLUSAEConfig(JumpReLUSAEConfig):
    """A JumpReLU that keeps pre-activations above a (possibly negative) threshold as they are."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "seed_jumprelu"


class SeedJumpReLUSAE(JumpReLUSAE):
    """p·[p > threshold] with p = W_enc(x − b_dec) + b_enc: SAELens' JumpReLU with the identity for its ReLU."""

    cfg: SeedJumpReLUSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return nn.Identity()


def _register(name: str, sae_cls: type, cfg_cls: type) -> None:
    # Re-importing this module (e.g. importlib.reload in tests) must not trip SAELens' duplicate check.
    if name not in SAE_CLASS_REGISTRY:
        register_sae_class(name, sae_cls, cfg_cls)


_register("sparsify", SparsifySAE, SparsifySAEConfig)
_register("sparsify_transcoder", SparsifyTranscoder, SparsifyTranscoderConfig)
_register("seed_jumprelu", SeedJumpReLUSAE, SeedJumpReLUSAEConfig)
