"""Routing statistics of a routed SAE over the unmasked tokens: float64 sums, merged exactly across ranks.

Per routed layer j (hard routing: the chosen layer; soft routing: the argmax layer, and the mean probability):
the route share, the mean router probability, the mean confidence p*, and the quality of the shared SAE on the
tokens routed there (explained variance within the layer, the paper's NormMSE, L0). Over all tokens: the mean
confidence, the share below 2/(L+1) (near-uniform), the router entropy H(p)/log L and exp(H) (effective layers),
the share of near ties (top-1 minus top-2 logit below `NEAR_TIE`), NormMSE (Shi et al. 2025, App. C: mean over
tokens of mean_d (ŷ − y)² / mean_d y²), and the explained variance of what the splice fed the SAE (LN of the live
activations, `passes.SpliceFit`), beside the one on the training input y.
"""

from __future__ import annotations

import math

import torch

from saehealth.routed.router import Routes

NEAR_TIE = 1e-3  # logits closer than this may flip route between implementations (fp32/bf16, TL/HF)


def near_uniform(n_routes: int) -> float:
    """The confidence below which a route counts as near-uniform: 2/(L+1), twice uniform over L+1 choices,
    which lies strictly between 1/L and 1 for every L ≥ 2 (2/L would be 1 for two layers)."""
    return 2.0 / (n_routes + 1)


class RoutingTally:
    """Accumulates routing statistics; `merge` adds another rank's."""

    def __init__(self, n_routes: int, d: int, device: str | torch.device = "cpu"):
        f64 = torch.float64  # the sums stay on the pass's device; `merge` brings another rank's (CPU) ones over
        self.n_routes = n_routes
        self.tokens = 0
        self.counts = torch.zeros(n_routes, dtype=f64, device=device)  # tokens routed to each layer
        self.prob_sums = torch.zeros(n_routes, dtype=f64, device=device)  # Σ p_j
        self.confidence = torch.zeros(n_routes, dtype=f64, device=device)  # Σ p* per chosen layer
        self.low_confidence = 0.0  # tokens with p* below `near_uniform(L)`
        self.entropy = 0.0  # Σ H(p) / log L
        self.effective = 0.0  # Σ exp(H(p))
        self.near_ties = 0.0
        self.sse = torch.zeros(n_routes, dtype=f64, device=device)  # Σ‖ŷ − y‖² per layer
        self.square = torch.zeros(n_routes, dtype=f64, device=device)  # Σ‖y‖² per layer
        self.sums = torch.zeros(n_routes, d, dtype=f64, device=device)  # Σy per layer (for the within-layer variance)
        self.norm_mse = torch.zeros(n_routes, dtype=f64, device=device)  # Σ_t ‖ŷ − y‖² / mean_d(y²)
        self.l0 = torch.zeros(n_routes, dtype=f64, device=device)
        self.splice = torch.zeros(3, dtype=f64, device=device)  # the splice's Σ‖u − û‖², Σ‖u‖², count
        self.splice_total = torch.zeros(d, dtype=f64, device=device)  # its Σu

    def update(self, routes: Routes, y: torch.Tensor, y_hat: torch.Tensor, mask: torch.Tensor, l0: torch.Tensor):
        """Add a batch: its routes, the SAE's input and output (batch, pos, d), the mask and per-token L0."""
        keep = mask.reshape(-1)
        probs = routes.probs.reshape(-1, self.n_routes)[keep].double()
        layer = routes.layer.reshape(-1)[keep]
        weight = routes.weight.reshape(-1)[keep].double()
        y64 = y.reshape(-1, y.shape[-1])[keep].double()
        err = (y_hat.reshape(-1, y.shape[-1])[keep].double() - y64).pow(2).sum(-1)
        square = y64.pow(2).sum(-1)
        one_hot = torch.nn.functional.one_hot(layer, self.n_routes).double()
        self.tokens += int(keep.sum())
        self.counts += one_hot.sum(0)
        self.prob_sums += probs.sum(0)
        self.confidence += one_hot.T @ weight
        self.low_confidence += float((weight < near_uniform(self.n_routes)).sum())
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
        self.entropy += float(entropy.sum()) / math.log(self.n_routes) if self.n_routes > 1 else 0.0
        self.effective += float(entropy.exp().sum())
        self.near_ties += float((routes.margin.reshape(-1)[keep] < NEAR_TIE).sum())
        self.sse += one_hot.T @ err
        self.square += one_hot.T @ square
        self.sums += one_hot.T @ y64
        self.norm_mse += one_hot.T @ (err / square.clamp_min(1e-300))  # mean_d err / mean_d y²
        self.l0 += one_hot.T @ l0.reshape(-1)[keep].double()

    def add_splice(self, fit) -> None:
        """Add a batch's `passes.SpliceFit` (what the spliced continuation fed the SAE)."""
        self.splice += torch.stack([fit.sse, fit.square, torch.tensor(float(fit.count), dtype=torch.float64)]).to(
            self.splice.device
        )
        self.splice_total += fit.total.to(self.splice_total.device)

    def merge(self, other: RoutingTally) -> None:
        names = ("counts", "prob_sums", "confidence", "sse", "square", "sums", "norm_mse", "l0", "splice")
        for name in (*names, "splice_total"):
            mine = getattr(self, name)
            mine.add_(getattr(other, name).to(mine.device))
        for name in ("tokens", "low_confidence", "entropy", "effective", "near_ties"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def result(self, hooks: list[str]) -> dict:
        """The routing section of the result: overall statistics and one entry per routed layer."""
        n = max(self.tokens, 1)
        counts = self.counts.cpu()
        # Σ‖y − ȳ_j‖² within each layer; Σ_j SSE_j / Σ_j SST_j is the within-layer FVU.
        sst = self.square.cpu() - self.sums.cpu().pow(2).sum(-1) / counts.clamp_min(1)
        layers = []
        for j, hook in enumerate(hooks):
            c = float(counts[j])
            layers.append(
                {
                    "hook": hook,
                    "route_share": c / n,
                    "mean_probability": float(self.prob_sums[j]) / n,
                    "tokens": int(c),
                    "mean_confidence": _ratio(self.confidence[j], c),
                    "explained_variance": None if c < 2 or sst[j] <= 0 else 1 - float(self.sse[j].cpu() / sst[j]),
                    "norm_mse": _ratio(self.norm_mse[j], c),
                    "l0": _ratio(self.l0[j], c),
                }
            )
        total_sst = float(sst[counts > 1].sum())
        splice_sse, splice_square, splice_n = (float(v) for v in self.splice.cpu())
        splice_sst = splice_square - float(self.splice_total.cpu().pow(2).sum()) / max(splice_n, 1)
        sse = self.sse.cpu()
        return {
            "tokens": self.tokens,
            "layers": layers,
            "router_confidence": float(self.confidence.sum()) / n,
            "low_confidence_share": self.low_confidence / n,
            "router_entropy": self.entropy / n,
            "effective_layers": self.effective / n,
            "near_tie_share": self.near_ties / n,
            "norm_mse": float(self.norm_mse.sum()) / n,
            "within_layer_fvu": float(sse[counts > 1].sum()) / total_sst if total_sst > 0 else None,
            "splice_explained_variance": 1 - splice_sse / splice_sst if splice_n > 1 and splice_sst > 0 else None,
        }


def _ratio(total: torch.Tensor, count: float) -> float | None:
    return float(total) / count if count > 0 else None
