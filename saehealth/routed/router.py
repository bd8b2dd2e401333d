"""The routing maths of RouteSAE (Shi et al. 2025, Eqs. 5–9 and 14), as the authors' `RouteSAE.forward` computes it.

For a token with routed-layer inputs x̃_0 … x̃_{L−1} (each normalised per token when the checkpoint says so):
v = Σ_j x̃_j (or the mean), p = softmax(W_router v) in float32; hard routing picks i* = argmax p and feeds the
shared SAE y = p*·x̃_{i*} with p* = max p; soft routing feeds y = Σ_j p_j x̃_j. y is the SAE's training target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def normalise(x: torch.Tensor, eps: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x − mean)/(std + eps) per token over the last dimension, with the mean and the (unbiased) std.

    `eps` None: no normalisation (the mean 0 and std 1 returned make `denormalise` the identity)."""
    if eps is None:
        return x, torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)  # unbiased, as the authors' pre_process
    return (x - mean) / (std + eps), mean, std


def denormalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo `normalise` the way the authors' evaluation hook does: x·std + mean (the eps is not put back)."""
    return x * std + mean


@dataclass
class Routes:
    """One batch's routing: probabilities (batch, pos, L) float32, the chosen layer i* and its probability p*,
    the top-1 minus top-2 logit, and the routed input y (batch, pos, d) the shared SAE encodes."""

    probs: torch.Tensor
    layer: torch.Tensor  # (batch, pos) int64: argmax p (hard); also recorded for soft routing
    weight: torch.Tensor  # (batch, pos) p* = max p
    margin: torch.Tensor  # (batch, pos) top-1 minus top-2 router logit (inf with one layer)
    y: torch.Tensor


def route(normalised: torch.Tensor, router: torch.Tensor, aggregation: str, routing: str) -> Routes:
    """Route a batch: `normalised` (batch, pos, L, d) are the routed layers' inputs, `router` W_router (L, d)."""
    pooled = normalised.sum(dim=2) if aggregation == "sum" else normalised.mean(dim=2)
    logits = pooled.float() @ router.float().T
    probs = torch.softmax(logits, dim=-1)
    weight, layer = probs.max(dim=-1)
    if logits.shape[-1] > 1:
        top2 = logits.topk(2, dim=-1).values
        margin = top2[..., 0] - top2[..., 1]
    else:
        margin = torch.full_like(weight, float("inf"))
    if routing == "hard":
        chosen = torch.gather(normalised, 2, layer[..., None, None].expand(*layer.shape, 1, normalised.shape[-1]))
        y = chosen.squeeze(2) * weight[..., None].to(normalised.dtype)
    else:
        y = (normalised * probs[..., None].to(normalised.dtype)).sum(dim=2)
    return Routes(probs, layer, weight, margin, y)


def with_routes(routes: Routes, normalised: torch.Tensor, layer: torch.Tensor) -> Routes:
    """The same batch with the chosen layers forced to `layer` (batch, pos) (hard routing): p* stays the router's
    probability of that layer. For tests and diagnostics that inject routes."""
    weight = torch.gather(routes.probs, -1, layer[..., None]).squeeze(-1)
    chosen = torch.gather(normalised, 2, layer[..., None, None].expand(*layer.shape, 1, normalised.shape[-1]))
    return Routes(routes.probs, layer, weight, routes.margin, chosen.squeeze(2) * weight[..., None].to(chosen.dtype))
