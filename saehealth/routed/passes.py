"""One batch of the routed pass: clean forward, routes, one gathered encode, spliced and zero continuations.

Per batch:
1. the clean model runs once, recording every routed layer's residual X_j (batch, pos, d);
2. the routed layers are normalised (when the checkpoint says so), the router picks each token's layer i* once,
   and the shared SAE encodes each token's routed input y once (gathered: one vector per token, never every
   token at every layer); (y, ŷ) are the reconstruction metrics' target and output;
3. hard routing only: one continuation starts at the first routed layer, and at each routed hook H_j the tokens
   routed to j (and not masked) have their **live** activation a (already changed by other tokens' splices
   upstream, through attention) replaced by R(a):
   - `official`: denorm(SAE(LN(a))), the authors' evaluation hook (no router-probability factor);
   - `rescaled`: denorm(SAE(p*·LN(a))/p*), consistent with the training input p*·LN(x);
   the routes stay those of the clean pass. Each routed token is encoded once more there (its live activation
   differs from the clean one). The zero continuation zeroes each token's residual at its routed layer, the
   authors' `Recovered` baseline: it depends on the routes, so the token-independent zero cache of
   single-hook residual sites does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from saehealth.errors import ConfigError, IncompatibleSAEError
from saehealth.models import check_hook
from saehealth.replay import _final, _ln_final, splice_site
from saehealth.routed.router import Routes, denormalise, normalise, route
from saehealth.routed.spec import RouteSpec, routed_hooks

# (routes, normalised routed inputs) -> routes: tests and diagnostics force routes through this.
RouteOverride = Callable[[Routes, torch.Tensor], Routes]


@dataclass
class RoutedSite:
    """A routed SAE's router resolved on a model: its hooks in depth order and where each one resumes."""

    spec: RouteSpec
    hooks: list[str]
    resume_at: list[int]  # start_at_layer of a continuation from each hook
    override: RouteOverride | None = None  # forces the routes (tests, diagnostics)

    @property
    def label(self) -> str:
        return ",".join(self.hooks)


def resolve_site(spec: RouteSpec, model, d_in: int) -> RoutedSite:
    """The routed hooks on `model`, checked: residual-stream hooks the model has, in depth order, of width d_in."""
    hooks = routed_hooks(spec, model.cfg.n_layers)
    resume = []
    for hook in hooks:
        check_hook(model, hook)
        site = splice_site(hook)
        if site.kind != "residual":
            raise IncompatibleSAEError(
                f"Routed hook {hook} is not a residual-stream hook: route over blocks.N.hook_resid_pre/post."
            )
        resume.append(site.resume_at)
    if any(b <= a for a, b in zip(resume, resume[1:], strict=False)):
        raise ConfigError(f"The routed hooks {', '.join(hooks)} must be distinct residual positions in depth order.")
    if int(model.cfg.d_model) != d_in or spec.router.shape[1] != d_in:
        raise IncompatibleSAEError(
            f"The routed SAE reads width {d_in} but the model's residual stream is {model.cfg.d_model}: check --model."
        )
    return RoutedSite(spec, hooks, resume)


def encode_decode(sae, x: torch.Tensor) -> torch.Tensor:
    """SAE(x) = decode(encode(x)) for x (tokens, d), in the SAE's dtype, back in x's dtype."""
    return sae.decode(sae.encode(x.to(sae.dtype))).to(x.dtype)


def splice_reconstruction(
    sae, live: torch.Tensor, weight: torch.Tensor, spec: RouteSpec, fit: SpliceFit | None = None
) -> torch.Tensor:
    """R(a) for the live activations `live` (tokens, d) of tokens routed to one layer, with their p* (tokens,);
    `fit` adds how well the SAE reconstructed LN(a), in the normalised space, before the denormalisation."""
    normalised, mean, std = normalise(live, spec.normalize_eps)
    if spec.splice_mode == "official":
        out = encode_decode(sae, normalised)
    else:
        scale = weight[:, None].to(normalised.dtype)
        out = encode_decode(sae, normalised * scale) / scale
    if fit is not None:
        fit.add(normalised, out)
    return denormalise(out, mean, std).to(live.dtype)


class SpliceFit:
    """Σ‖u − û‖², Σ‖u‖², Σu and the count over what the splice fed the SAE (u = LN(a) of the live activations,
    û the reconstruction before denormalisation), in float64: the explained variance of the splice itself.

    Set against the explained variance on the training input y, a gap says the splice feeds the SAE inputs unlike
    those it was trained on (the `official` mode drops p*, so a confident router makes u ≈ y/p*)."""

    def __init__(self, d: int, device):
        self.sse = torch.zeros((), dtype=torch.float64, device=device)
        self.square = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(d, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, u: torch.Tensor, u_hat: torch.Tensor) -> None:
        u64 = u.double()
        self.sse += (u_hat.double() - u64).pow(2).sum()
        self.square += u64.pow(2).sum()
        self.total += u64.sum(0)
        self.count += u.shape[0]


@dataclass
class RoutedBatch:
    """One batch's routed outputs (the final residuals are what the unembedding reads)."""

    clean: torch.Tensor  # (batch, pos, d_model)
    routes: Routes
    y: torch.Tensor  # (batch, pos, d) the SAE's input and reconstruction target
    y_hat: torch.Tensor
    spliced: torch.Tensor | None  # None for soft routing: no faithful splice
    zero: torch.Tensor | None
    fit: SpliceFit | None = None  # the splice's own reconstruction sums (hard routing)


def routes_of(site: RoutedSite, recorded: dict[str, torch.Tensor]) -> Routes:
    """The routes of a batch from the clean forward's `recorded` activations at every routed hook (the site's
    `override`, when set, forces them)."""
    stacked = torch.stack([recorded[name] for name in site.hooks], dim=2)  # (batch, pos, L, d)
    normalised, _, _ = normalise(stacked, site.spec.normalize_eps)
    routes = route(normalised, site.spec.router.to(stacked.device), site.spec.aggregation, site.spec.routing)
    return routes if site.override is None else site.override(routes, normalised)


@torch.no_grad()
def routed_inputs(model, site: RoutedSite, tokens: torch.Tensor):
    """The clean forward recording every routed layer: (clean final residual, the routed layers' activations by
    hook, the routes with the SAE's input y)."""
    recorded: dict[str, torch.Tensor] = {}

    def record(activation, hook):
        recorded[hook.name] = activation

    with model.hooks(fwd_hooks=[(name, record) for name in site.hooks]):
        clean = _ln_final(model, model(tokens, stop_at_layer=model.cfg.n_layers))
    return clean, recorded, routes_of(site, recorded)


@torch.no_grad()
def routed_batch(
    model,
    site: RoutedSite,
    reconstruct: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sae,
    tokens: torch.Tensor,
    mask: torch.Tensor,
) -> RoutedBatch:
    """Run one batch with its own clean forward (`continue_routed` does the rest)."""
    clean, recorded, routes = routed_inputs(model, site, tokens)
    return continue_routed(model, site, reconstruct, sae, clean, recorded, routes, mask)


@torch.no_grad()
def continue_routed(
    model,
    site: RoutedSite,
    reconstruct: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    sae,
    clean: torch.Tensor,
    recorded: dict[str, torch.Tensor],
    routes: Routes,
    mask: torch.Tensor,
) -> RoutedBatch:
    """One batch after its clean forward (`clean` final residual, `recorded` activations at the routed hooks,
    which a forward shared with other SAEs may have recorded): `reconstruct(y, mask, layer)` encodes and decodes
    the gathered inputs (the scorer, which records the latents, with each token's routed layer); `sae` encodes the
    live activations of the splice."""
    first = recorded[site.hooks[0]]
    y_hat = reconstruct(routes.y, mask, routes.layer)
    if site.spec.routing != "hard":
        return RoutedBatch(clean, routes, routes.y, y_hat, None, None)
    chosen = torch.nn.functional.one_hot(routes.layer, site.spec.n_routes).bool() & mask[..., None]
    fit = SpliceFit(routes.y.shape[-1], routes.y.device)

    def splice(live: torch.Tensor, j: int) -> torch.Tensor:
        sel = chosen[:, :, j]
        out = live.clone()
        if bool(sel.any()):
            out[sel] = splice_reconstruction(sae, live[sel], routes.weight[sel], site.spec, fit)
        return out

    def zero(live: torch.Tensor, j: int) -> torch.Tensor:
        return live.masked_fill(chosen[:, :, j][..., None], 0)

    spliced = _continue(model, site, first, splice)
    zeroed = _continue(model, site, first, zero)
    return RoutedBatch(clean, routes, routes.y, y_hat, spliced, zeroed, fit)


def _continue(model, site: RoutedSite, first: torch.Tensor, replace: Callable[[torch.Tensor, int], torch.Tensor]):
    """The final residual of the continuation from the first routed hook with `replace(live, j)` at every H_j.

    A `hook_resid_post` first hook is not run again by a continuation from the next block, so its replacement is
    applied to the starting residual; a `hook_resid_pre` fires inside the continuation, like every later hook."""
    hooks, start = [], first
    for j, name in enumerate(site.hooks):
        if j == 0 and not name.endswith("hook_resid_pre"):
            start = replace(first, 0)
            continue

        def at_layer(activation, hook, j=j):  # noqa: ARG001
            return replace(activation, j)

        hooks.append((name, at_layer))
    with model.hooks(fwd_hooks=hooks):
        return _final(model, start, site.resume_at[0])
