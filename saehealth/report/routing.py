"""A routed SAE's routing section in the reports: the router's settings and statistics, one row per routed layer.

Rendered from `EvalResult.routing` (saehealth/routed/checks.py); absent for every other SAE.
"""

from __future__ import annotations

from rich.table import Table

LAYER_COLUMNS = ("Routed hook", "Route share", "Mean p", "Confidence", "EV in layer", "NormMSE", "L0", "Dead here")


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def routing_facts(routing: dict) -> list[tuple[str, str]]:
    """(fact, value) lines of the routing section."""
    eps = routing.get("normalize_eps")
    facts = [
        ("Routing", f"{routing['routing']}, router input the {routing['aggregation']} of the routed layers"),
        ("Normalisation", "none (raw residuals)" if eps is None else f"per token and layer, eps {eps:g}"),
    ]
    if routing.get("splice_mode"):
        facts.append(("Splice mode", routing["splice_mode"]))
    facts += [
        ("Router confidence (mean top probability)", _number(routing.get("router_confidence"))),
        ("Near-uniform routes (top probability < 2/(L+1))", _number(routing.get("low_confidence_share"))),
        ("Router entropy H(p)/log L", _number(routing.get("router_entropy"))),
        ("Effective layers exp(H)", _number(routing.get("effective_layers"), 2)),
        ("Near ties (top-2 logits within 1e-3)", _number(routing.get("near_tie_share"))),
        ("NormMSE (Shi et al. 2025, App. C)", _number(routing.get("norm_mse"), 4)),
        ("Within-layer FVU", _number(routing.get("within_layer_fvu"), 4)),
        ("EV of what the splice fed the SAE (live activations)", _number(routing.get("splice_explained_variance"))),
        ("Unused layers (< 0.1% of tokens)", ", ".join(routing.get("unused_layers") or []) or "none"),
    ]
    if routing.get("collapsed"):
        facts.append(("Collapse", f"one layer takes {routing['max_route_share']:.1%} of the tokens"))
    if routing.get("latent_layers"):
        spread = routing["latent_layers"]
        facts.append(
            ("Latents by layers fired at", f"{spread['single_layer']} at one layer, {spread['multi_layer']} at several")
        )
    if routing.get("loss_recovered_baseline"):
        facts.append(("Loss recovered baseline", "routed zero ablation: not comparable with single-layer SAEs"))
    return facts


def layer_rows(routing: dict) -> list[tuple[str, ...]]:
    """One row per routed layer, in depth order (LAYER_COLUMNS)."""
    rows = []
    for layer in routing.get("layers", []):
        dead = layer.get("dead_latents")
        rows.append(
            (
                layer["hook"],
                f"{layer['route_share']:.1%}",
                _number(layer.get("mean_probability")),
                _number(layer.get("mean_confidence")),
                _number(layer.get("explained_variance")),
                _number(layer.get("norm_mse"), 4),
                _number(layer.get("l0"), 1),
                "–" if dead is None else f"{dead:,}",
            )
        )
    return rows


def routing_markdown(routing: dict | None) -> list[str]:
    """The markdown lines of a result's routing section ([] for an SAE that is not routed)."""
    if not routing:
        return []
    lines = ["## Routing", ""]
    lines += [f"- **{fact}**: {value}" for fact, value in routing_facts(routing)]
    lines += ["", "| " + " | ".join(LAYER_COLUMNS) + " |", "| --- |" + " ---: |" * (len(LAYER_COLUMNS) - 1)]
    lines += ["| `" + row[0] + "` | " + " | ".join(row[1:]) + " |" for row in layer_rows(routing)]
    lines += [
        "",
        "*Route share: tokens routed to the layer (soft routing: its argmax layer). EV in layer and NormMSE: the "
        "shared SAE on the tokens routed there, against their routed input. Dead here: latents that never fired "
        "on those tokens.*",
        "",
    ]
    return lines


def routing_table(routing: dict | None) -> Table | None:
    """The terminal's table of a result's routing section (None for an SAE that is not routed)."""
    if not routing:
        return None
    facts = "; ".join(f"{fact} {value}" for fact, value in routing_facts(routing)[:6])
    table = Table(title="Routing", title_justify="left", caption=facts, caption_justify="left")
    for i, column in enumerate(LAYER_COLUMNS):
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    for row in layer_rows(routing):
        table.add_row(*row)
    return table
