"""The one pass over a batch: one clean forward for every SAE of the model, then each SAE's continuation.

Per batch of token sequences:
1. the clean model runs once, all the way, recording on the way the activation at every hook an SAE reads or
   writes and the residual stream where a continuation will resume;
2. per splice site (a hook, or a transcoder's input/output pair, or one head), the zero-ablated continuation
   runs once, and per SAE at that site the SAE encodes the activation x there, decodes x̂, and the rest of the
   model runs from that hook on with x̂ spliced in at unmasked positions. Nothing before a site is recomputed.
The continuations stop before the unembedding: the downstream metrics unembed final residuals a tile at a time.

How a site resumes (`SpliceSite.kind`):
- `residual` (`blocks.N.hook_resid_pre` / `hook_resid_post`): the residual itself goes to `start_at_layer`. Its
  zero-ablated continuation starts from an all-zero residual, which carries no token information, so its final
  residual is the same for every sequence: computed once per (layer, context length) and reused, exactly.
- `mlp_out` (`blocks.N.hook_mlp_out`): what the MLP adds to the residual stream (resid_post = resid_mid + mlp_out,
  or resid_pre + attn_out + mlp_out with parallel attention; TransformerLens hooks it after any post-MLP norm),
  so the continuations start at block N + 1 from resid_post + (x̂ − x) (spliced) and resid_post − x (zero).
- `in_block` (any other hook inside a block: `hook_resid_mid`, `hook_attn_out`, `mlp.hook_post`, `attn.hook_z`...):
  the block restarts from its recorded resid_pre, with a replacement hook added in a `model.hooks()` context (which
  removes it in `finally`); the zero ablation and each SAE's splice are separate calls (stacking them into one
  call was slower on CPU: larger fresh allocations).
- `generic` (e.g. `hook_embed`): the whole model runs with the replacement hook.

Transcoders read one hook and write another: x is read at the input hook, and the decoder's output replaces the
activation at the output hook, whose true value is the reconstruction target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from saehealth.errors import IncompatibleSAEError
from saehealth.metrics.downstream import Readout

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HEAD_HOOKS = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")


@dataclass(frozen=True)
class SpliceSite:
    """Where an SAE reads and writes, and where the model resumes after the clean forward."""

    hook_name: str  # where the reconstruction is spliced in (the output hook for transcoders)
    input_hook: str  # where the SAE reads its input (== hook_name for SAEs)
    kind: str  # "residual" | "mlp_out" | "in_block" | "generic"
    resume_at: int | None  # start_at_layer of the continuations (None: the whole model runs again)
    head_dims: bool  # the spliced activation is (batch, pos, n_heads, d_head): flattened for the SAE
    input_head_dims: bool
    head_index: int | None = None  # the SAE reads and writes this one head only (SAELens `hook_head_index`)

    @property
    def is_transcoder(self) -> bool:
        return self.input_hook != self.hook_name

    @property
    def layer(self) -> int | None:
        """The block of the spliced hook (None for hooks outside the blocks)."""
        block = _block_of(self.hook_name)
        return block[0] if block else None


def _block_of(hook_name: str) -> tuple[int, str] | None:
    match = _BLOCK_HOOK.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else None


def splice_site(hook_name: str, input_hook: str | None = None, head_index: int | None = None) -> SpliceSite:
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
        return SpliceSite(hook_name, input_hook, "generic", None, *dims)
    layer, rest = out_block
    if input_hook == hook_name and rest == "hook_resid_pre":
        return SpliceSite(hook_name, input_hook, "residual", layer, *dims)
    if input_hook == hook_name and rest == "hook_resid_post":
        return SpliceSite(hook_name, input_hook, "residual", layer + 1, *dims)
    if rest == "hook_mlp_out" and in_block[0] <= layer:
        return SpliceSite(hook_name, input_hook, "mlp_out", layer + 1, *dims)
    return SpliceSite(hook_name, input_hook, "in_block", min(layer, in_block[0]), *dims)


class Splice(Protocol):
    """One SAE as the replay sees it: the SAE's view of its input hook (batch, pos, d_in) and the mask of
    positions that count -> its reconstruction (batch, pos, d_out). Implementations may record whatever they
    need about the latents on the way (the per-SAE scorer does)."""

    def reconstruct(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SiteGroup:
    """The SAEs spliced at one site (they share its zero ablation)."""

    site: SpliceSite
    saes: Sequence[Splice]


@dataclass
class SAEOutputs:
    """One SAE's share of a batch."""

    x: torch.Tensor  # (batch, pos, d) the true activation at the spliced hook (the reconstruction target)
    x_hat: torch.Tensor  # (batch, pos, d) the SAE's output (at every position, masked or not)
    final: torch.Tensor  # (batch, pos, d_model) the unembedding's input with the SAE spliced in


@dataclass
class SiteOutputs:
    """One site's zero ablation and its SAEs' outputs."""

    zero: torch.Tensor  # (batch or 1, pos, d_model) final residual, 1 when the same for every sequence
    zero_key: tuple | None  # identifies a zero that is the same for every batch (the readout caches its logits)
    saes: list[SAEOutputs]


@dataclass
class BatchOutputs:
    """What one batch yields: the clean final residual, shared by every site, and each site's outputs.

    Final residuals are what the unembedding reads (after `ln_final`); `readout(model)` turns them into logits,
    which the downstream metrics do a tile at a time.
    """

    clean: torch.Tensor  # (batch, pos, d_model)
    sites: list[SiteOutputs]
    recorded: dict = field(default_factory=dict)  # the clean forward's recorded activations, by hook


@dataclass
class ReplayCache:
    """State reused across batches: zero-ablated final residuals of residual sites, by (layer, context length)."""

    zero_finals: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


def readout(model) -> Readout:
    """The model's unembedding (with its output soft cap) as a `Readout` for the downstream metrics.

    The same computation as TransformerLens' `Unembed` (final · W_U + b_U), as one `addmm` on W_U as stored:
    `Unembed.forward` copies W_U on every call, and the metrics call it per tile. Into a buffer where the model is
    float32 (`Readout.unembed_into`), so that a tile's logits never take a fresh tile-sized allocation.
    """
    weight, bias = model.unembed.W_U.detach(), model.unembed.b_U.detach()
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)

    def capped(logits: torch.Tensor) -> torch.Tensor:  # in place: the cap's three steps as the model takes them
        return logits.div_(cap).tanh_().mul_(cap) if cap > 0 else logits

    def unembed(final: torch.Tensor) -> torch.Tensor:
        flat = final.reshape(-1, final.shape[-1])
        return capped(torch.addmm(bias, flat, weight)).reshape(*final.shape[:-1], weight.shape[1])

    def unembed_into(final: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.addmm(bias, final.reshape(-1, final.shape[-1]), weight, out=out.view(-1, out.shape[-1]))
        return capped(out)

    float32 = weight.dtype == torch.float32 and bias.dtype == torch.float32
    return Readout(unembed, int(model.cfg.d_vocab_out), unembed_into=unembed_into if float32 else None)


def _final(model, start: torch.Tensor, start_at_layer: int | None) -> torch.Tensor:
    """Run the remaining blocks and `ln_final`: everything of the forward pass but the unembedding."""
    residual = model(start, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers)
    return _ln_final(model, residual)


def _ln_final(model, residual: torch.Tensor) -> torch.Tensor:
    return model.ln_final(residual) if model.cfg.normalization_type is not None else residual


def _residual_hook(model, layer: int) -> str:
    """The hook holding the residual stream at the input of block `layer` (after the last block: its output)."""
    return f"blocks.{layer}.hook_resid_pre" if layer < model.cfg.n_layers else f"blocks.{layer - 1}.hook_resid_post"


def recorded_hooks(model, site: SpliceSite) -> set[str]:
    """What the clean forward must record for this site."""
    if site.kind == "residual":
        return {site.hook_name}
    if site.kind == "mlp_out":
        return {site.input_hook, site.hook_name, _residual_hook(model, site.resume_at)}
    if site.kind == "in_block":
        return {_residual_hook(model, site.resume_at)}
    return set()


def record_clean(
    model, sites: Sequence[SpliceSite], tokens: torch.Tensor, also: Sequence[str] = ()
) -> tuple[torch.Tensor, dict]:
    """The clean forward: (final residual (batch, pos, d_model), the activations the sites' continuations need,
    and those at the hooks `also` names: a routed SAE's layers)."""
    wanted = set(also).union(*(recorded_hooks(model, site) for site in sites))
    recorded: dict[str, torch.Tensor] = {}

    def record(activation, hook):
        recorded[hook.name] = activation

    with model.hooks(fwd_hooks=[(name, record) for name in sorted(wanted)]):
        clean = _ln_final(model, model(tokens, stop_at_layer=model.cfg.n_layers))
    silent = sorted(wanted - recorded.keys())
    if silent:
        raise IncompatibleSAEError(f"Hook {silent[0]!r} never fired in a forward pass: pick another hook.")
    return clean, recorded


@torch.no_grad()
def replay_batch(
    model,
    groups: Sequence[SiteGroup],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    cache: ReplayCache | None = None,
    also: Sequence[str] = (),
) -> BatchOutputs:
    """Run one batch: the clean forward once for every site, each site's zero ablation once, then one spliced
    continuation per SAE (SAEs at one site share everything but their own splice). `also`: hooks the clean
    forward records besides (a routed SAE's layers, whose continuations the caller runs)."""
    clean, recorded = record_clean(model, [group.site for group in groups], tokens, also)
    sites = [replay_site(model, group, tokens, mask, recorded, cache) for group in groups]
    return BatchOutputs(clean, sites, recorded)


def _start(model, site: SpliceSite, tokens: torch.Tensor, recorded: dict) -> tuple[torch.Tensor, int | None]:
    """(input, start_at_layer) of a continuation that re-runs a block (in_block) or the whole model (generic)."""
    if site.kind == "in_block":
        return recorded[_residual_hook(model, site.resume_at)], site.resume_at
    return tokens, None


def zero_final(model, site: SpliceSite, tokens, recorded: dict, cache: ReplayCache | None) -> tuple:
    """(final residual of the site's zero-ablated continuation, its cache key or None): batch 1 and keyed when
    it is the same for every sequence (a residual site), else (batch, pos, d_model)."""
    if site.kind == "residual":
        return _shared_zero_final(model, site.resume_at, recorded[site.hook_name], cache), ("residual", site.resume_at)
    if site.kind == "mlp_out":
        x, resid_post = recorded[site.hook_name], recorded[_residual_hook(model, site.resume_at)]
        return _final(model, resid_post - x, site.resume_at), None
    start, resume_at = _start(model, site, tokens, recorded)

    def zero_ablate(activation, hook):  # noqa: ARG001
        return torch.zeros_like(activation)

    with model.hooks(fwd_hooks=[(site.hook_name, zero_ablate)]):
        return _final(model, start, resume_at), None


def replay_site(
    model, group: SiteGroup, tokens, mask, recorded: dict, cache: ReplayCache | None, zero: tuple | None = None
) -> SiteOutputs:
    """One site's zero ablation (`zero` when the caller computed it already: `zero_final`'s pair) and each of
    its SAEs' spliced continuations, from the clean forward's `recorded` activations."""
    site = group.site
    zero_out, zero_key = zero if zero is not None else zero_final(model, site, tokens, recorded, cache)
    outputs = [_spliced_continuation(model, site, sae, tokens, mask, recorded) for sae in group.saes]
    return SiteOutputs(zero_out, zero_key, outputs)


def _spliced_continuation(model, site: SpliceSite, sae: Splice, tokens, mask, recorded: dict) -> SAEOutputs:
    if site.kind == "residual":
        x = recorded[site.hook_name]
        target, x_hat, spliced = _splice(sae, site, x, x, mask)
        return SAEOutputs(target, x_hat, _final(model, spliced, site.resume_at))
    if site.kind == "mlp_out":
        x, resid_post = recorded[site.hook_name], recorded[_residual_hook(model, site.resume_at)]
        target, x_hat, spliced = _splice(sae, site, recorded[site.input_hook], x, mask)
        return SAEOutputs(target, x_hat, _final(model, resid_post + (spliced - x), site.resume_at))
    start, resume_at = _start(model, site, tokens, recorded)
    record: dict = {}

    def capture_input(activation, hook):  # noqa: ARG001
        record["input"] = activation

    def replace(activation, hook):  # noqa: ARG001
        source = record.pop("input") if site.is_transcoder else activation
        record["x"], record["x_hat"], spliced = _splice(sae, site, source, activation, mask)
        return spliced

    hooks = [(site.input_hook, capture_input)] if site.is_transcoder else []
    with model.hooks(fwd_hooks=[*hooks, (site.hook_name, replace)]):
        final = _final(model, start, resume_at)
    if "x" not in record:
        raise IncompatibleSAEError(f"Hook {site.hook_name!r} never fired in a forward pass: pick another hook.")
    return SAEOutputs(record["x"], record["x_hat"], final)


def _splice(sae: Splice, site: SpliceSite, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """(x, x̂, the hook's activation with x̂ spliced in at unmasked positions) for one SAE."""
    flat_target = sae_view(target, site.head_dims, site.head_index)
    x_hat = sae.reconstruct(sae_view(source, site.input_head_dims, site.head_index), mask).to(flat_target.dtype)
    if x_hat.shape != flat_target.shape:
        raise IncompatibleSAEError(
            f"The SAE outputs width {x_hat.shape[-1]} but {site.hook_name} has width {flat_target.shape[-1]}: "
            "check --hook and --model."
        )
    spliced = torch.where(mask[..., None], x_hat, flat_target)
    if site.head_index is None:
        return flat_target, x_hat, spliced.reshape(target.shape)
    whole = target.clone()  # the other heads keep their true activations
    whole[..., site.head_index, :] = spliced
    return flat_target, x_hat, whole


def sae_view(activation: torch.Tensor, head_dims: bool, head_index: int | None) -> torch.Tensor:
    """What the SAE sees of a hook's activation: one head, all heads flattened, or the activation itself."""
    if head_index is not None:
        return activation[..., head_index, :]
    return activation.flatten(-2, -1) if head_dims else activation


def _shared_zero_final(model, layer: int, residual: torch.Tensor, cache: ReplayCache | None) -> torch.Tensor:
    """Final residual of the continuation from an all-zero residual at block `layer`: (1, pos, d_model), the same
    for every sequence."""
    key = (layer, residual.shape[1])
    if cache is not None and key in cache.zero_finals:
        return cache.zero_finals[key]
    final = _final(model, torch.zeros_like(residual[:1]), layer)
    if cache is not None:
        cache.zero_finals[key] = final
    return final
