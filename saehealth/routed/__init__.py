"""Routed SAEs (RouteSAE, RouteMatryoshkaSAE): a router picks one residual layer per token, one shared SAE encodes it.

- `spec`: what a routed checkpoint says (router, aggregation, routing, normalisation, layers) and its hooks;
- `router`: the routing maths (per-layer normalisation, router probabilities, the routed input y);
- `passes`: one batch of the routed pass (clean forward, routes, the spliced and zero-ablated continuations);
- `stats`: the routing statistics (route shares, confidence, entropy, near ties, per-layer quality);
- `scoring`: the pass over every batch, merged across torchrun ranks;
- `checks`: the verdicts on routing (unused layers, collapse) and the result's routing section.
"""
