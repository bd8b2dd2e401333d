"""Downstream metrics: cross-entropy and KL of the clean, spliced and zero-ablated model.

Definitions: ../shared/METRICS.md "Downstream". Predicting positions are every position but the last of
a sequence whose input token is unmasked; CE and KL are float64 sums over them, divided once at the end.
"""

from __future__ import annotations

import torch

from saehealth.result import DOWNSTREAM_KEYS

VARIANTS = ("clean", "sae", "zero")


class DownstreamAccumulator:
    """Streams logits of the three variants; `result()` gives CE losses, loss recovered and KL scores.

    Written so that no log-softmax is materialised: with lse = logsumexp(logits) and p the clean
    distribution,
        CE      = lse − logit[next token]
        KL(P‖Q) = Σ_v p_v·clean_v − lse_clean − (Σ_v p_v·q_v − lse_q)
    so each variant costs one logsumexp and one row-wise dot product with p over the vocabulary, and
    only p (one batch × vocabulary tensor) is kept alive besides the logits themselves.
    """

    def __init__(self):
        self.positions = 0
        self.ce = dict.fromkeys(VARIANTS, 0.0)
        self.kl = {"sae": 0.0, "zero": 0.0}

    def update(self, logits: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add a batch: logits per variant (batch, pos, vocab), tokens and mask (batch, pos).

        A variant's logits may have batch size 1 when they are the same for every sequence (the zero
        ablation of a residual stream); they broadcast. Returns per-sequence totals (n_pred,
        ce_<variant>, kl_<variant>) for the standard errors.
        """
        predicting = mask[:, :-1].to(torch.float64)
        clean = logits["clean"][:, :-1].float()
        lse_clean = torch.logsumexp(clean, dim=-1)
        p = torch.exp(clean - lse_clean[..., None])
        neg_entropy = torch.linalg.vecdot(p, clean) - lse_clean
        totals = {"n_pred": predicting.sum(1)}
        for variant in VARIANTS:
            if variant == "clean":
                lse, variant_logits = lse_clean, clean
            else:
                variant_logits = logits[variant][:, :-1].float()
                lse = torch.logsumexp(variant_logits, dim=-1)
                kl = neg_entropy - (torch.linalg.vecdot(p, variant_logits) - lse)  # broadcasts over batch
                kl_total = (kl.to(torch.float64) * predicting).sum(1)
                totals[f"kl_{variant}"] = kl_total
                self.kl[variant] += float(kl_total.sum())
            shaped = variant_logits.expand(tokens.shape[0], -1, -1)
            target = shaped.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            ce_total = ((lse - target).to(torch.float64) * predicting).sum(1)  # lse broadcasts too
            totals[f"ce_{variant}"] = ce_total
            self.ce[variant] += float(ce_total.sum())
        self.positions += int(predicting.sum())
        return totals

    def result(self) -> dict[str, float | None]:
        if self.positions == 0:
            return dict.fromkeys(DOWNSTREAM_KEYS)
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
