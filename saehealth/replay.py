"""The one pass: run the model to the SAE's hook once, then continue clean, spliced and zero-ablated.

Per batch of token sequences:
1. the prefix (blocks before the hook) runs once;
2. the SAE encodes the activation x at the hook and decodes x̂;
3. the rest of the model runs on stacked copies — x (clean), x̂ at unmasked positions (spliced), zeros
   (zero ablation) — in one batched call, so the prefix is never recomputed.

Residual-stream hooks (`blocks.N.hook_resid_pre` / `hook_resid_post`) hand the residual straight to
`start_at_layer`. There the zero-ablated continuation starts from an all-zero residual, which carries no
token information, so its logits are the same for every sequence: they are computed once per context
length and reused (an exact saving of a third of the continuation work, not an approximation).
Hooks inside a block (`hook_resid_mid`, `hook_attn_out`, `hook_mlp_out`, `mlp.hook_post`, `attn.hook_z`,
...) restart from that block with a replacement hook that sees the three copies at once. Anything else
(e.g. `hook_embed`) runs the whole model with the replacement hook.

Transcoders read one hook and write another: x is read at the input hook, and the decoder's output
replaces the activation at the output hook, whose true value is the reconstruction target.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from saehealth.errors import IncompatibleSAEError

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HEAD_HOOKS = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")


@dataclass(frozen=True)
class SpliceSite:
    """Where the SAE reads and writes, and how the model is resumed after the shared prefix."""

    hook_name: str  # where the reconstruction is spliced in (the output hook for transcoders)
    input_hook: str  # where the SAE reads its input (== hook_name for SAEs)
    kind: str  # "residual" | "in_block" | "generic"
    prefix_stop: int | None  # stop_at_layer for the shared prefix (None: no shared prefix)
    resume_at: int | None  # start_at_layer for the continuation
    head_dims: bool  # the spliced activation is (batch, pos, n_heads, d_head): flattened for the SAE
    input_head_dims: bool

    @property
    def is_transcoder(self) -> bool:
        return self.input_hook != self.hook_name


def _block_of(hook_name: str) -> tuple[int, str] | None:
    match = _BLOCK_HOOK.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else None


def splice_site(model, hook_name: str, input_hook: str | None = None) -> SpliceSite:  # noqa: ARG001
    """Classify a TransformerLens hook (and a transcoder's input hook) into a `SpliceSite`."""
    input_hook = input_hook or hook_name
    head_dims = hook_name.split(".")[-1] in _HEAD_HOOKS
    input_head_dims = input_hook.split(".")[-1] in _HEAD_HOOKS
    out_block, in_block = _block_of(hook_name), _block_of(input_hook)
    if out_block is None or in_block is None:
        return SpliceSite(hook_name, input_hook, "generic", None, None, head_dims, input_head_dims)
    layer, rest = out_block
    if input_hook == hook_name and rest == "hook_resid_pre":
        return SpliceSite(hook_name, input_hook, "residual", layer, layer, head_dims, input_head_dims)
    if input_hook == hook_name and rest == "hook_resid_post":
        return SpliceSite(hook_name, input_hook, "residual", layer + 1, layer + 1, head_dims, input_head_dims)
    start = min(layer, in_block[0])
    return SpliceSite(hook_name, input_hook, "in_block", start, start, head_dims, input_head_dims)


# encode(x) -> latents and decode(latents) -> x̂ on (batch, pos, d) tensors.
Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BatchOutputs:
    """What one batch yields for the accumulators."""

    x: torch.Tensor  # (batch, pos, d) the true activation at the spliced hook (the reconstruction target)
    x_hat: torch.Tensor  # (batch, pos, d) the SAE's output (at every position, masked or not)
    feature_acts: torch.Tensor  # (batch, pos, d_sae)
    # "clean" / "sae": (batch, pos, vocab); "zero": (batch or 1, pos, vocab), 1 when shared by all sequences
    logits: dict[str, torch.Tensor]


@dataclass
class ReplayCache:
    """State reused across batches: zero-ablated logits of residual sites, by context length."""

    zero_logits: dict[int, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def replay_batch(model, site: SpliceSite, encode: Encoder, decode: Encoder, tokens: torch.Tensor, mask: torch.Tensor,
                 cache: ReplayCache | None = None) -> BatchOutputs:
    """Run one batch through the shared prefix and the continuations."""
    batch, length = tokens.shape
    captured: dict[str, torch.Tensor] = {}

    def reconstruct(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SAE output for `source`, spliced into `target` at unmasked positions; records x, x̂, latents."""
        flat_source = source.flatten(-2, -1) if site.input_head_dims else source
        flat_target = target.flatten(-2, -1) if site.head_dims else target
        feature_acts = encode(flat_source)
        x_hat = decode(feature_acts).to(flat_target.dtype)
        if x_hat.shape != flat_target.shape:
            raise IncompatibleSAEError(
                f"The SAE outputs width {x_hat.shape[-1]} but {site.hook_name} has width {flat_target.shape[-1]}: "
                "check --hook and --model."
            )
        captured.update(x=flat_target, x_hat=x_hat, feature_acts=feature_acts)
        spliced = torch.where(mask[..., None], x_hat, flat_target)
        return spliced.reshape(target.shape)

    def capture_input(activation: torch.Tensor, hook) -> None:  # noqa: ARG001
        captured["input"] = activation[:batch]

    def replace_output(activation: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        # The copies share everything upstream, so the first third is the clean activation for all.
        clean = activation[:batch]
        source = captured.pop("input") if site.is_transcoder else clean
        spliced = reconstruct(source, clean)
        return torch.cat([clean, spliced, torch.zeros_like(clean)])

    hooks = [(site.hook_name, replace_output)]
    if site.is_transcoder:
        hooks.insert(0, (site.input_hook, capture_input))

    if site.kind == "residual":
        residual = model(tokens, stop_at_layer=site.prefix_stop)
        spliced = reconstruct(residual, residual)
        clean, sae = model(torch.cat([residual, spliced]), start_at_layer=site.resume_at).split(batch)
        zero = _shared_zero_logits(model, site, residual, cache)
        return _outputs(captured, site, clean, sae, zero)
    if site.kind == "in_block":
        residual = model(tokens, stop_at_layer=site.prefix_stop)
        with model.hooks(fwd_hooks=hooks):
            logits = model(torch.cat([residual] * 3), start_at_layer=site.resume_at)
    else:
        with model.hooks(fwd_hooks=hooks):
            logits = model(torch.cat([tokens] * 3))
    clean, sae, zero = logits.split(batch)
    return _outputs(captured, site, clean, sae, zero)


def _shared_zero_logits(model, site: SpliceSite, residual: torch.Tensor, cache: ReplayCache | None) -> torch.Tensor:
    """Logits of the continuation from an all-zero residual: (1, pos, vocab), the same for every sequence."""
    length = residual.shape[1]
    if cache is not None and length in cache.zero_logits:
        return cache.zero_logits[length]
    zeros = torch.zeros_like(residual[:1])
    logits = model(zeros, start_at_layer=site.resume_at)
    if cache is not None:
        cache.zero_logits[length] = logits
    return logits


def _outputs(captured: dict, site: SpliceSite, clean, sae, zero) -> BatchOutputs:
    if "x" not in captured:
        raise IncompatibleSAEError(f"Hook {site.hook_name!r} never fired in a forward pass: pick another hook.")
    return BatchOutputs(
        x=captured["x"],
        x_hat=captured["x_hat"],
        feature_acts=captured["feature_acts"],
        logits={"clean": clean, "sae": sae, "zero": zero},
    )
