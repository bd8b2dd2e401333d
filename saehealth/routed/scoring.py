"""The routed pass over every batch: one routed SAE's metrics and routing statistics, merged across ranks.

The same accumulators as a single-hook SAE (`scoring.SAEScorer`), fed with the routed input y and its
reconstruction ŷ, and with the routed splice's downstream totals (`metrics/downstream.py`); the routing
statistics (`stats.RoutingTally`) beside them. Under torchrun each rank passes its own shard and rank 0 gets the
merged outputs, exactly as `scoring.score_batches` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from saehealth import distributed
from saehealth.data import special_token_mask
from saehealth.metrics.downstream import SiteFinals, downstream_totals
from saehealth.replay import SAEOutputs, readout
from saehealth.routed.latent_layers import LatentLayerTally
from saehealth.routed.passes import RoutedSite, RouteOverride, routed_batch, routed_inputs
from saehealth.routed.stats import RoutingTally
from saehealth.sae_scorer import PassOutput, SAEScorer
from saehealth.saebench.sums import last_position_kl


@torch.no_grad()
def score_routed(
    model,
    site: RoutedSite,
    sae,
    batches: Iterable[torch.Tensor],
    include_special_tokens: bool = False,
    device: str = "cpu",
    advance: Callable[[int], None] | None = None,
    reference: torch.Tensor | None = None,
    examples: int = 0,
    override: RouteOverride | None = None,
) -> tuple[PassOutput, dict] | None:
    """(the pass's output, the routing statistics) of one routed SAE; None on torchrun ranks other than 0.

    `reference` is the evaluation's first sequence (1, ctx), the same on every rank: the reconstruction
    accumulator's reference mean is taken from its routed inputs. `override` forces routes (tests, diagnostics).
    """
    with distributed.step():
        tallies = _local_pass(
            model, site, sae, batches, include_special_tokens, device, advance, reference, examples, override
        )
    merged = distributed.merge_on_first_rank(tallies)
    if merged is None:
        return None
    tally, routing, latent_layers = merged
    stats = routing.result(site.hooks)
    dead, spread, per_latent = latent_layers.result()
    for layer, count in zip(stats["layers"], dead, strict=True):
        layer["dead_latents"] = count
    stats["latent_layers"] = spread
    output = tally.output()
    output.details["routing_latent_layer_counts"] = per_latent
    return output, stats


def _local_pass(model, site, sae, batches, include_special_tokens, device, advance, reference, examples, override):
    scorer = SAEScorer(sae, device, examples)
    routing = RoutingTally(site.spec.n_routes, int(sae.cfg.d_in), device)
    latent_layers = LatentLayerTally(site.spec.n_routes, int(sae.cfg.d_sae), device)
    here, local = distributed.ranks(), 0
    unembedding = readout(model)

    def reconstruct(y: torch.Tensor, mask: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        latent_layers.begin(layer, mask)
        try:
            return scorer.reconstruct(y, mask)
        finally:
            latent_layers.end()

    watch = latent_layers.attach(sae)
    try:
        if reference is not None:
            tokens = reference.to(device)
            _, _, routes = routed_inputs(model, site, tokens, override)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            scorer.tally.reconstruction.set_reference(routes.y.to(sae.dtype), mask)
        for tokens in batches:
            tokens = tokens.to(device)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            ids = here.rank + here.world_size * (local + torch.arange(tokens.shape[0], device=tokens.device))
            local += tokens.shape[0]
            scorer.begin(ids)
            out = routed_batch(model, site, reconstruct, sae, tokens, mask, override)
            y = out.y.to(out.y_hat.dtype)
            routing.update(out.routes, y, out.y_hat, mask, scorer.batch_l0)
            if out.fit is not None:
                routing.add_splice(out.fit)
            if out.spliced is None:  # soft routing: no faithful splice, nothing predicted
                scorer.update(SAEOutputs(y, out.y_hat, out.clean), None, mask)
            else:
                finals = [SiteFinals(out.zero, None, [out.spliced])]
                clean, (shared,), ((own,),) = downstream_totals(unembedding, out.clean, finals, tokens, mask)
                last_shared, (last_own,) = last_position_kl(unembedding, out.clean, out.zero, [out.spliced], mask)
                shared.update(last_shared)
                own.update(last_own)
                scorer.update(SAEOutputs(y, out.y_hat, out.spliced), {**clean, **shared, **own}, mask)
            if advance is not None:
                advance(tokens.numel())
    finally:
        watch.remove()
        scorer.restore()
    return [scorer.tally, routing, latent_layers]


def routed_plan_site(loaded, model):
    """(the routed site, the hook label "H_0,H_1,…", the splice site of the first routed hook) for a `Plan`.

    The first hook's site stands for the SAE where one site is needed (the logit lens reads the decoder rows
    from there)."""
    from saehealth.replay import splice_site
    from saehealth.routed.passes import resolve_site

    site = resolve_site(loaded.route, model, loaded.d_in)
    return site, site.label, splice_site(site.hooks[0])


def score_routed_plan(
    plan, batches, config, advance, reference, notes: list[str], not_measured: dict
) -> PassOutput | None:
    """`Evaluation.score` for a routed SAE: the pass, its routing section on the output, and the notes and reasons
    it adds (soft routing: the downstream metrics are not measured)."""
    from saehealth.result import DOWNSTREAM_KEYS
    from saehealth.routed.checks import LOSS_RECOVERED_BASELINE, SOFT_DOWNSTREAM, routing_section

    scored = score_routed(
        plan.model, plan.route, plan.sae, batches, config.include_special_tokens, config.device, advance,
        reference, config.examples,
    )  # fmt: skip
    if scored is None:
        return None
    output, stats = scored
    output.routing = routing_section(plan.route, stats)
    spec = plan.route.spec
    if spec.routing == "soft":
        not_measured.update(dict.fromkeys(DOWNSTREAM_KEYS, SOFT_DOWNSTREAM))
        for key in DOWNSTREAM_KEYS:
            output.metrics[key] = None
    else:
        notes.append(LOSS_RECOVERED_BASELINE[0].upper() + LOSS_RECOVERED_BASELINE[1:] + ".")
        notes.append(
            f"Routed splice mode {spec.splice_mode!r}: "
            + (
                "each routed token's live activation a becomes denorm(SAE(LN(a))), as the authors' evaluation does"
                if spec.splice_mode == "official"
                else "each routed token's live activation a becomes denorm(SAE(p·LN(a))/p), p its router probability, "
                "as the SAE was trained"
            )
            + " (LN: the checkpoint's per-token normalisation, the identity when it has none); the routes are the "
            "clean pass's."
        )
    notes.append(
        "Reconstruction metrics are on the routed input y (p·x̃ at the chosen layer, p its router probability, x̃ the residual, "
        "normalised when the checkpoint says so; soft routing: Σ p_j x̃_j), the SAE's training target; per-layer "
        "figures are in the routing section."
    )
    return output


def check_routed_options(config) -> None:
    """Refuse, in one line, the options a routed SAE does not support yet."""
    from saehealth.errors import ConfigError

    if config.activations is not None:
        raise ConfigError(
            "--activations scores one hook's cached activations; a routed SAE reads several layers per token: "
            "drop --activations to replay the model."
        )
    if config.saebench_out is not None:
        raise ConfigError("SAEBench files describe single-hook SAEs: drop --saebench-out for a routed SAE.")
    if config.layer is not None:
        raise ConfigError("--layer moves a single-hook SAE: give a routed SAE's hooks with --hook H0,H1,...")
