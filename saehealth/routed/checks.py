"""A routed SAE's result: its routing section, the limits of the routing checks, and why some metrics are not
measured.

Two checks bear on the verdict (secondary checks beside the thresholds' bands, `verdicts.routing_verdicts`):
- `routing_unused_layers`: routed layers that receive under `UNUSED_SHARE` of the tokens. Healthy: none;
  borderline: fewer than half of the layers; unhealthy: half or more.
- `routing_collapse`: the largest route share. Healthy up to 0.75; borderline up to 0.9; above 0.9 the router
  has collapsed onto one layer (the SAE is a single-layer SAE with extra steps).
"""

from __future__ import annotations

UNUSED_SHARE = 0.001
COLLAPSE_HEALTHY, COLLAPSE_SHARE = 0.75, 0.9
ROUTED_ABSORPTION = (
    "not applicable to a routed SAE: its input mixes layers token by token (the first-letter probes read one hook)"
)
SOFT_DOWNSTREAM = (
    "not applicable with soft routing: the SAE reconstructs a probability-weighted mix of layers, which no single "
    "residual holds, so there is no faithful splice (the authors' evaluation refuses it too)"
)
LOSS_RECOVERED_BASELINE = (
    "loss recovered of a routed SAE is against the routed zero ablation (each token's residual zeroed at its "
    "routed layer), the authors' `Recovered`: its denominator depends on the routes, so it is not comparable with "
    "single-layer SAEs' loss recovered; compare ΔCE and KL instead"
)


def routed_logit_lens_note(hooks: list[str]) -> str:
    """What the logit lens of a routed SAE's latents reads (said beside its latent cards)."""
    first = hooks[0] if hooks else "the first routed hook"
    return (
        f"Logit lens of a routed SAE: each decoder row is read as a direction written at the first routed hook "
        f"({first}) and taken straight through the final normalisation and the unembedding. The decoder is shared "
        "by every routed layer, and this direct path ignores the blocks after the layer a token was routed to, which "
        "are not the same blocks for every layer: it is one reading among several (the tokens promoted do not "
        "depend on which routed hook is named, since every routed hook is in the residual stream)."
    )


def routing_section(site, stats: dict) -> dict:
    """The result's `routing`: the router's settings, the statistics, and the flagged layers."""
    spec = site.spec
    shares = [layer["route_share"] for layer in stats["layers"]]
    unused = [layer["hook"] for layer in stats["layers"] if layer["route_share"] < UNUSED_SHARE]
    return {
        "layout": spec.layout,
        "routing": spec.routing,
        "aggregation": spec.aggregation,
        "normalize_eps": spec.normalize_eps,
        "splice_mode": spec.splice_mode if spec.routing == "hard" else None,
        "sources": dict(spec.sources),
        "hooks": list(site.hooks),
        **stats,
        "unused_layers": unused,
        "max_route_share": max(shares) if shares else None,
        "collapsed": bool(shares) and max(shares) > COLLAPSE_SHARE,
        "loss_recovered_baseline": "routed zero ablation" if spec.routing == "hard" else None,
    }
