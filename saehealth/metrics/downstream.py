"""Downstream metrics: cross-entropy and KL of the clean, spliced and zero-ablated model.

Definitions: ../shared/METRICS.md "Downstream". Predicting positions are every position but the last of
a sequence whose input token is unmasked; CE and KL are float64 sums over them, divided once at the end.
"""

from __future__ import annotations

import torch

VARIANTS = ("clean", "sae", "zero")


def token_cross_entropy(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """−log p(next token) at positions 0..L−2: (batch, pos−1)."""
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) summed over the vocabulary at positions 0..L−2: (batch, pos−1)."""
    log_p, log_q = log_p[:, :-1], log_q[:, :-1]
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class DownstreamAccumulator:
    """Streams logits of the three variants; `result()` gives CE losses, loss recovered and KL scores."""

    def __init__(self):
        self.positions = 0
        self.ce = dict.fromkeys(VARIANTS, 0.0)
        self.kl = {"sae": 0.0, "zero": 0.0}

    def update(
        self, logits: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Add a batch: logits per variant (batch, pos, vocab), tokens and mask (batch, pos).

        Log-probabilities are taken in float32 one variant at a time, so at most two
        batch × vocabulary tensors (clean and the current variant) are alive at once.
        """
        predicting = mask[:, :-1].to(torch.float64)
        clean = torch.log_softmax(logits["clean"].float(), dim=-1)
        totals = {"n_pred": predicting.sum(1)}
        for variant in VARIANTS:
            log_probs = clean if variant == "clean" else torch.log_softmax(logits[variant].float(), dim=-1)
            ce = (token_cross_entropy(log_probs, tokens).to(torch.float64) * predicting).sum(1)
            totals[f"ce_{variant}"] = ce
            self.ce[variant] += float(ce.sum())
            if variant != "clean":
                kl = (token_kl(clean, log_probs).to(torch.float64) * predicting).sum(1)
                totals[f"kl_{variant}"] = kl
                self.kl[variant] += float(kl.sum())
            del log_probs
        self.positions += int(predicting.sum())
        return totals

    def result(self) -> dict[str, float | None]:
        if self.positions == 0:
            return dict.fromkeys(
                (
                    "ce_loss_clean",
                    "ce_loss_with_sae",
                    "ce_loss_zero_ablation",
                    "delta_ce",
                    "loss_recovered",
                    "kl_div_with_sae",
                    "kl_div_zero_ablation",
                    "kl_div_score",
                )
            )
        n = self.positions
        clean, sae, zero = (self.ce[v] / n for v in VARIANTS)
        kl_sae, kl_zero = self.kl["sae"] / n, self.kl["zero"] / n
        return {
            "ce_loss_clean": clean,
            "ce_loss_with_sae": sae,
            "ce_loss_zero_ablation": zero,
            "delta_ce": sae - clean,
            "loss_recovered": (zero - sae) / (zero - clean) if zero != clean else None,
            "kl_div_with_sae": kl_sae,
            "kl_div_zero_ablation": kl_zero,
            "kl_div_score": 1.0 - kl_sae / kl_zero if kl_zero > 0 else None,
        }
