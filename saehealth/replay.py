"""The one pass: run the model to the SAE's hook once, then continue clean, spliced and zero-ablated.

Per batch of token sequences:
1. the prefix (blocks before the hook) runs once;
2. the SAE encodes the activation x at the hook and decodes x̂;
3. the rest of the model runs on three stacked copies — x (clean), x̂ at unmasked positions (spliced),
   zeros everywhere (zero ablation) — in one batched call, so the prefix is never recomputed.

Residual-stream hooks (`blocks.N.hook_resid_pre` / `hook_resid_post`) hand the residual straight to
`start_at_layer`; hooks inside a block (`hook_resid_mid`, `hook_attn_out`, `hook_mlp_out`,
`mlp.hook_post`, `attn.hook_z`, ...) restart from that block with a replacement hook that sees the three
copies at once. Anything else (e.g. `hook_embed`) runs the whole model with the replacement hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from saehealth.errors import IncompatibleSAEError

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class SpliceSite:
    """Where the SAE sits and how the model is resumed after it."""

    hook_name: str
    kind: str  # "residual" | "in_block" | "generic"
    prefix_stop: int | None  # stop_at_layer for the shared prefix (None: no shared prefix)
    resume_at: int | None  # start_at_layer for the continuation
    head_dims: bool  # activation is (batch, pos, n_heads, d_head): flattened for the SAE


def splice_site(model, hook_name: str) -> SpliceSite:
    """Classify a TransformerLens hook name into a `SpliceSite` for this model."""
    head_dims = hook_name.split(".")[-1] in ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")
    match = _BLOCK_HOOK.match(hook_name)
    if match is None:
        return SpliceSite(hook_name, "generic", None, None, head_dims)
    layer, rest = int(match.group(1)), match.group(2)
    if rest == "hook_resid_pre":
        return SpliceSite(hook_name, "residual", layer, layer, head_dims)
    if rest == "hook_resid_post":
        return SpliceSite(hook_name, "residual", layer + 1, layer + 1, head_dims)
    return SpliceSite(hook_name, "in_block", layer, layer, head_dims)


# encode(x) -> latents and decode(latents) -> x̂ on (batch, pos, d_in) tensors in the model's dtype.
Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BatchOutputs:
    """What one batch yields for the accumulators."""

    x: torch.Tensor  # (batch, pos, d_in) activation at the hook
    x_hat: torch.Tensor  # (batch, pos, d_in) reconstruction (at every position, masked or not)
    feature_acts: torch.Tensor  # (batch, pos, d_sae)
    logits: dict[str, torch.Tensor]  # "clean" / "sae" / "zero": (batch, pos, vocab)


@torch.no_grad()
def replay_batch(
    model, site: SpliceSite, encode: Encoder, decode: Encoder, tokens: torch.Tensor, mask: torch.Tensor
) -> BatchOutputs:
    """Run one batch through the shared prefix and the three continuations."""
    batch = tokens.shape[0]
    captured: dict[str, torch.Tensor] = {}

    def splice(x: torch.Tensor) -> torch.Tensor:
        """x (batch, pos, ...) -> the three stacked continuation inputs, recording x, x̂, latents."""
        flat = x.flatten(-2, -1) if site.head_dims else x
        feature_acts = encode(flat)
        x_hat = decode(feature_acts).to(flat.dtype)
        spliced = torch.where(mask[..., None], x_hat, flat)
        captured.update(x=flat, x_hat=x_hat, feature_acts=feature_acts)
        if site.head_dims:
            spliced = spliced.reshape(x.shape)
        return torch.cat([x, spliced, torch.zeros_like(x)])

    def replacement_hook(activation: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        # The three copies share the prefix, so the clean third is x for all of them.
        return splice(activation[:batch])

    if site.kind == "residual":
        residual = model(tokens, stop_at_layer=site.prefix_stop)
        logits = model(splice(residual), start_at_layer=site.resume_at)
    elif site.kind == "in_block":
        residual = model(tokens, stop_at_layer=site.prefix_stop)
        with model.hooks(fwd_hooks=[(site.hook_name, replacement_hook)]):
            logits = model(torch.cat([residual] * 3), start_at_layer=site.resume_at)
    else:
        with model.hooks(fwd_hooks=[(site.hook_name, replacement_hook)]):
            logits = model(torch.cat([tokens] * 3))
    if "x" not in captured:
        raise IncompatibleSAEError(f"Hook {site.hook_name!r} never fired in a forward pass: pick another hook.")
    clean, sae, zero = logits.split(batch)
    return BatchOutputs(
        x=captured["x"],
        x_hat=captured["x_hat"],
        feature_acts=captured["feature_acts"],
        logits={"clean": clean, "sae": sae, "zero": zero},
    )
