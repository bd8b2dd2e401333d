"""The one pass: run the model to the SAE's hook once, then continue clean, spliced and zero-ablated.

Per batch of token sequences:
1. the prefix (blocks before the hook) runs once;
2. the SAE encodes the activation x at the hook and decodes x̂;
3. the rest of the model runs on x (clean), x̂ at unmasked positions (spliced) and zeros (zero ablation),
   so the prefix is never recomputed. The continuations stop before the unembedding: the downstream
   metrics unembed their final residuals a tile of positions at a time.

Residual-stream hooks (`blocks.N.hook_resid_pre` / `hook_resid_post`) hand the residual straight to
`start_at_layer`. There the zero-ablated continuation starts from an all-zero residual, which carries no
token information, so its logits are the same for every sequence: they are computed once per context
length and reused (an exact saving of a third of the continuation work, not an approximation).
`blocks.N.hook_mlp_out` is what the MLP adds to the residual stream (resid_post = resid_mid + mlp_out,
or resid_pre + attn_out + mlp_out with parallel attention, and TransformerLens hooks it after any
post-MLP norm), so the prefix runs through block N once, capturing x, and the continuations start at
block N + 1 from resid_post (clean), resid_post + (x̂ − x) (spliced) and resid_post − x (zero ablation).
Other hooks inside a block (`hook_resid_mid`, `hook_attn_out`, `mlp.hook_post`, `attn.hook_z`, ...)
restart from that block: clean, zero-ablated (a hook returns zeros) and each SAE's splice (a replacement
hook) each in a call of its own (stacking them into one call was slower on CPU: larger fresh allocations).
Anything else (e.g. `hook_embed`) runs the whole model with the replacement hook.

Transcoders read one hook and write another: x is read at the input hook, and the decoder's output
replaces the activation at the output hook, whose true value is the reconstruction target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saehealth.errors import IncompatibleSAEError
from saehealth.metrics.downstream import Readout

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HEAD_HOOKS = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")


@dataclass(frozen=True)
class SpliceSite:
    """Where the SAE reads and writes, and how the model is resumed after the shared prefix."""

    hook_name: str  # where the reconstruction is spliced in (the output hook for transcoders)
    input_hook: str  # where the SAE reads its input (== hook_name for SAEs)
    kind: str  # "residual" | "mlp_out" | "in_block" | "generic"
    prefix_stop: int | None  # stop_at_layer for the shared prefix (None: no shared prefix)
    resume_at: int | None  # start_at_layer for the continuation
    head_dims: bool  # the spliced activation is (batch, pos, n_heads, d_head): flattened for the SAE
    input_head_dims: bool
    head_index: int | None = None  # the SAE reads and writes this one head only (SAELens `hook_head_index`)

    @property
    def is_transcoder(self) -> bool:
        return self.input_hook != self.hook_name


def _block_of(hook_name: str) -> tuple[int, str] | None:
    match = _BLOCK_HOOK.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else None


def splice_site(
    model,  # noqa: ARG001
    hook_name: str,
    input_hook: str | None = None,
    head_index: int | None = None,
) -> SpliceSite:
    """Classify a TransformerLens hook (and a transcoder's input hook) into a `SpliceSite`.

    `head_index` (SAELens `hook_head_index`) restricts an SAE at a per-head hook (e.g. `attn.hook_z`) to one
    head: it reads (batch, pos, d_head) and only that head is replaced.
    """
    input_hook = input_hook or hook_name
    head_dims = hook_name.split(".")[-1] in _HEAD_HOOKS
    if head_index is not None and (input_hook != hook_name or not head_dims):
        raise IncompatibleSAEError(
            f"The SAE sets hook_head_index {head_index} but {hook_name} has no heads: "
            "use a per-head hook such as blocks.N.attn.hook_z, or remove hook_head_index from its cfg.json."
        )
    input_head_dims = input_hook.split(".")[-1] in _HEAD_HOOKS
    out_block, in_block = _block_of(hook_name), _block_of(input_hook)
    dims = (head_dims, input_head_dims, head_index)
    if out_block is None or in_block is None:
        return SpliceSite(hook_name, input_hook, "generic", None, None, *dims)
    layer, rest = out_block
    if input_hook == hook_name and rest == "hook_resid_pre":
        return SpliceSite(hook_name, input_hook, "residual", layer, layer, *dims)
    if input_hook == hook_name and rest == "hook_resid_post":
        return SpliceSite(hook_name, input_hook, "residual", layer + 1, layer + 1, *dims)
    if rest == "hook_mlp_out" and in_block[0] <= layer:
        return SpliceSite(hook_name, input_hook, "mlp_out", layer + 1, layer + 1, *dims)
    start = min(layer, in_block[0])
    return SpliceSite(hook_name, input_hook, "in_block", start, start, *dims)


# encode(x) -> latents and decode(latents) -> x̂ on (batch, pos, d) tensors.
Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SAEOutputs:
    """One SAE's share of a batch."""

    x: torch.Tensor  # (batch, pos, d) the true activation at the spliced hook (the reconstruction target)
    x_hat: torch.Tensor  # (batch, pos, d) the SAE's output (at every position, masked or not)
    feature_acts: torch.Tensor  # (batch, pos, d_sae)
    final: torch.Tensor  # (batch, pos, d_model) the unembedding's input with the SAE spliced in


@dataclass
class BatchOutputs:
    """What one batch yields: the shared clean and zero-ablated final residuals, and each SAE's outputs.

    Final residuals are what the unembedding reads (after `ln_final`); `readout(model)` turns them into
    logits, which the downstream metrics do a tile at a time.
    """

    clean: torch.Tensor  # (batch, pos, d_model)
    zero: torch.Tensor  # (batch or 1, pos, d_model); 1 when the same for every sequence
    saes: list[SAEOutputs]


@dataclass
class ReplayCache:
    """State reused across batches: zero-ablated final residuals of residual sites, by context length."""

    zero_finals: dict[int, torch.Tensor] = field(default_factory=dict)


def readout(model) -> Readout:
    """The model's unembedding (with its output soft cap) as a `Readout` for the downstream metrics.

    The same computation as TransformerLens' `Unembed` (F.linear with W_Uᵀ, plus b_U), with W_Uᵀ made
    contiguous once per pass: `Unembed.forward` copies it on every call, and the metrics call it per tile.
    """
    weight, bias = model.unembed.W_U.T.contiguous(), model.unembed.b_U
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)

    def unembed(final: torch.Tensor) -> torch.Tensor:
        logits = F.linear(final, weight, bias)
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    return Readout(unembed, int(model.cfg.d_vocab_out))


def _final(model, start: torch.Tensor, start_at_layer: int | None) -> torch.Tensor:
    """Run the remaining blocks and `ln_final`: everything of the forward pass but the unembedding."""
    residual = model(start, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers)
    return model.ln_final(residual) if model.cfg.normalization_type is not None else residual


@torch.no_grad()
def replay_batch(
    model,
    site: SpliceSite,
    saes: Sequence[tuple[Encoder, Encoder]],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    cache: ReplayCache | None = None,
) -> BatchOutputs:
    """Run one batch: the shared prefix once, clean and zero-ablated continuations once, then one
    spliced continuation per SAE (all SAEs at this site share everything but their own splice)."""
    captured: dict[str, torch.Tensor] = {}
    if site.kind == "generic":
        start, resume_at = tokens, None
    elif site.kind == "mlp_out":  # the prefix runs through the hook's block and records the SAE's hooks

        def capture(activation, hook):
            captured[hook.name] = activation

        with model.hooks(fwd_hooks=[(name, capture) for name in {site.input_hook, site.hook_name}]):
            start, resume_at = model(tokens, stop_at_layer=site.prefix_stop), site.resume_at
    else:
        start, resume_at = model(tokens, stop_at_layer=site.prefix_stop), site.resume_at

    def reconstruct(encode: Encoder, decode: Encoder, source: torch.Tensor, target: torch.Tensor, record: dict):
        """The SAE's output for `source`, spliced into `target` at unmasked positions."""
        flat_source = sae_view(source, site.input_head_dims, site.head_index)
        flat_target = sae_view(target, site.head_dims, site.head_index)
        feature_acts = encode(flat_source)
        x_hat = decode(feature_acts).to(flat_target.dtype)
        if x_hat.shape != flat_target.shape:
            raise IncompatibleSAEError(
                f"The SAE outputs width {x_hat.shape[-1]} but {site.hook_name} has width {flat_target.shape[-1]}: "
                "check --hook and --model."
            )
        record.update(x=flat_target, x_hat=x_hat, feature_acts=feature_acts)
        spliced = torch.where(mask[..., None], x_hat, flat_target)
        if site.head_index is None:
            return spliced.reshape(target.shape)
        whole = target.clone()  # the other heads keep their true activations
        whole[..., site.head_index, :] = spliced
        return whole

    outputs = []
    if site.kind == "residual":
        clean = _final(model, start, resume_at)
        zero = _shared_zero_final(model, site, start, cache)
        for encode, decode in saes:
            record: dict = {}
            spliced = reconstruct(encode, decode, start, start, record)
            outputs.append(SAEOutputs(**record, final=_final(model, spliced, resume_at)))
        return BatchOutputs(clean, zero, outputs)

    if site.kind == "mlp_out":
        silent = sorted({site.input_hook, site.hook_name} - captured.keys())
        if silent:
            raise IncompatibleSAEError(f"Hook {silent[0]!r} never fired in a forward pass: pick another hook.")
        x = captured[site.hook_name]
        clean, zero = _final(model, start, resume_at), _final(model, start - x, resume_at)
        for encode, decode in saes:
            record = {}
            change = reconstruct(encode, decode, captured[site.input_hook], x, record) - x  # 0 where masked
            outputs.append(SAEOutputs(**record, final=_final(model, start + change, resume_at)))
        return BatchOutputs(clean, zero, outputs)

    def zero_ablate(activation, hook):  # noqa: ARG001
        return torch.zeros_like(activation)

    clean = _final(model, start, resume_at)
    with model.hooks(fwd_hooks=[(site.hook_name, zero_ablate)]):
        zero = _final(model, start, resume_at)
    for encode, decode in saes:
        record = {}

        def capture_input(activation, hook, record=record):  # noqa: ARG001
            record["input"] = activation

        def splice(activation, hook, record=record, encode=encode, decode=decode):  # noqa: ARG001
            source = record.pop("input") if site.is_transcoder else activation
            return reconstruct(encode, decode, source, activation, record)

        hooks = (
            [(site.input_hook, capture_input), (site.hook_name, splice)]
            if site.is_transcoder
            else [(site.hook_name, splice)]
        )
        with model.hooks(fwd_hooks=hooks):
            final = _final(model, start, resume_at)
        if "x" not in record:
            raise IncompatibleSAEError(f"Hook {site.hook_name!r} never fired in a forward pass: pick another hook.")
        outputs.append(SAEOutputs(**record, final=final))
    return BatchOutputs(clean, zero, outputs)


def sae_view(activation: torch.Tensor, head_dims: bool, head_index: int | None) -> torch.Tensor:
    """What the SAE sees of a hook's activation: one head, all heads flattened, or the activation itself."""
    if head_index is not None:
        return activation[..., head_index, :]
    return activation.flatten(-2, -1) if head_dims else activation


def _shared_zero_final(model, site: SpliceSite, residual: torch.Tensor, cache: ReplayCache | None) -> torch.Tensor:
    """Final residual of the continuation from an all-zero residual: (1, pos, d_model), the same for every
    sequence."""
    length = residual.shape[1]
    if cache is not None and length in cache.zero_finals:
        return cache.zero_finals[length]
    final = _final(model, torch.zeros_like(residual[:1]), site.resume_at)
    if cache is not None:
        cache.zero_finals[length] = final
    return final
