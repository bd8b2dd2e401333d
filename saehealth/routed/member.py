"""A routed SAE as one member of the shared pass (`scoring.score_batches`), beside any single-hook SAEs of the model.

The clean forward is the pass's, run once for every SAE: it records each routed layer's activation along with the
single-hook SAEs' hooks. From there the routed SAE's share is its own (`passes.continue_routed`): the routes, one
gathered encode per token, and its spliced and zero-ablated continuations from its first routed block. Its scorer
(`sae_scorer.SAEScorer`) gets the routed input y, its reconstruction and the spliced final residual, exactly as a
single-hook SAE's gets x, x̂ and its own; the routing statistics and the latent × layer counts are kept beside it
and merged across torchrun ranks with the scorers' tallies.
"""

from __future__ import annotations

import torch

from saehealth.replay import SAEOutputs, SiteOutputs
from saehealth.routed.latent_layers import LatentLayerTally
from saehealth.routed.passes import RoutedSite, continue_routed, routes_of
from saehealth.routed.stats import RoutingTally
from saehealth.sae_scorer import PassOutput, SAEScorer


class RoutedMember:
    """One routed SAE during the pass: its site, its scorer, its routing statistics and latent × layer counts."""

    def __init__(self, site: RoutedSite, scorer: SAEScorer, device: str | torch.device = "cpu"):
        sae = scorer.sae
        self.site, self.scorer = site, scorer
        self.routing = RoutingTally(site.spec.n_routes, int(sae.cfg.d_in), device)
        self.latent_layers = LatentLayerTally(site.spec.n_routes, int(sae.cfg.d_sae), device)
        self._watch = None

    @property
    def hooks(self) -> list[str]:
        """What the shared clean forward must record for this SAE."""
        return list(self.site.hooks)

    def attach(self) -> None:
        """Start counting latent firings by routed layer (`detach` stops)."""
        self._watch = self.latent_layers.attach(self.scorer.sae)

    def detach(self) -> None:
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def set_reference(self, recorded: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """The reconstruction accumulator's reference mean and the antipodal candidates, from the routed inputs y
        of the evaluation's first sequence (`recorded`: its activations at the routed hooks)."""
        y = routes_of(self.site, recorded).y.to(self.scorer.sae.dtype)
        self.scorer.tally.reconstruction.set_reference(y, mask)
        self.scorer.choose_pairs(y, mask)

    def batch(self, model, clean: torch.Tensor, recorded: dict, mask: torch.Tensor) -> SiteOutputs | SAEOutputs:
        """This SAE's share of a batch after the shared clean forward. Hard routing: a `SiteOutputs` of its own
        (its routed zero ablation, which no other SAE shares, and its splice) for the downstream metrics; soft
        routing: the `SAEOutputs` alone (nothing is spliced, so there is nothing downstream to score)."""
        out = continue_routed(model, self.site, self._reconstruct, self.scorer.sae, clean, recorded,
                              routes_of(self.site, recorded), mask)  # fmt: skip
        y = out.y.to(out.y_hat.dtype)
        self.routing.update(out.routes, y, out.y_hat, mask, self.scorer.batch_l0)
        if out.fit is not None:
            self.routing.add_splice(out.fit)
        if out.spliced is None:
            return SAEOutputs(y, out.y_hat, out.clean)
        return SiteOutputs(out.zero, None, [SAEOutputs(y, out.y_hat, out.spliced)])

    def _reconstruct(self, y: torch.Tensor, mask: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        self.latent_layers.begin(layer, mask)
        try:
            return self.scorer.reconstruct(y, mask)
        finally:
            self.latent_layers.end()

    def tallies(self) -> list:
        """What is merged across torchrun ranks beside the scorer's tally."""
        return [self.routing, self.latent_layers]

    def finish(self, output: PassOutput, routing: RoutingTally, latent_layers: LatentLayerTally) -> None:
        """Put the (merged) routing statistics on the output: `output.routing` (the raw statistics, which
        `checks.routing_section` completes) and the per-latent layer counts in its details."""
        stats = routing.result(self.site.hooks)
        dead, spread, per_latent = latent_layers.result()
        for layer, count in zip(stats["layers"], dead, strict=True):
            layer["dead_latents"] = count
        stats["latent_layers"] = spread
        output.details["routing_latent_layer_counts"] = per_latent
        output.routing = stats
