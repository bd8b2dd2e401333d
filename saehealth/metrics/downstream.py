"""Downstream metrics: cross-entropy and KL of the clean, spliced and zero-ablated model.

Definitions: ../shared/METRICS.md "Downstream". Predicting positions are every position but the last of
a sequence whose input token is unmasked; CE and KL are float64 sums over them, divided once at the end.

The replay hands over final residuals (what the unembedding reads), not logits: `downstream_totals`
unembeds them a tile of positions at a time, so no batch × vocabulary tensor ever exists. Small tiles are
also what makes this fast on CPU: a tile stays in cache and its buffers are reused, where a batch-sized
logits tensor (tens of MB) is mapped afresh from the OS, and page-faulted, on every allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from saehealth.result import AGREEMENT_KEYS, DOWNSTREAM_KEYS

VARIANTS = ("clean", "sae", "zero")
TOP_K = 5  # the next-token agreement's top-k overlap

# Elements of one tile of logits. CPU: 2M floats (8 MiB) keeps a tile near the cache and below the
# allocator's mmap threshold; accelerators: large tiles, so that kernel launches stay few.
TILE_ELEMENTS_CPU = 2**21
TILE_ELEMENTS_ACCELERATOR = 2**26


@dataclass
class Readout:
    """Final residuals (..., d) → logits (..., d_vocab): the model's unembedding (identity for tests)."""

    unembed: Callable[[torch.Tensor], torch.Tensor]
    d_vocab: int
    # Zero-ablated logits and their logsumexp, by (site key, context length), for zero-ablated inputs of batch 1
    # (token-independent: the same for every batch of that length).
    zero_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def identity(cls, d_vocab: int) -> Readout:
        return cls(lambda logits: logits, d_vocab)

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        return self.unembed(final).float()


@dataclass
class SiteFinals:
    """One splice site's final residuals for a batch: its zero ablation and each of its SAEs' splices."""

    zero: torch.Tensor  # (batch or 1, pos, d); batch 1 when the zero ablation is the same for every sequence
    zero_key: Hashable | None  # set when that batch-1 zero is the same for every batch: its logits are cached
    spliced: Sequence[torch.Tensor]  # (batch, pos, d) per SAE


@torch.no_grad()
def downstream_totals(
    readout: Readout,
    clean: torch.Tensor,
    sites: Sequence[SiteFinals],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    agreement: bool = True,
) -> tuple[dict, list[dict], list[list[dict]]]:
    """Per-sequence CE and KL totals for one batch, for every SAE of every site.

    clean: final residuals (batch, pos, d); tokens and mask (batch, pos). Returns float64 (batch,) tensors: the
    clean totals (n_pred, ce_clean), per site its zero ablation's (ce_zero, kl_zero), and per site and SAE its
    own (ce_sae, kl_sae).

    With lse = logsumexp(logits) and p the clean distribution,
        CE      = lse − logit[next token]
        KL(P‖Q) = Σ_v p_v·clean_v − lse_clean − (Σ_v p_v·q_v − lse_q)
    so each variant costs one logsumexp and one row-wise dot product with p, and the clean side (p, its
    entropy) is computed once per tile for every SAE at every site.

    Beside the per-sequence totals: per-position sums over the batch's sequences ("pos_n_pred", "pos_ce_clean";
    per SAE "pos_ce_sae", "pos_kl_sae": (pos − 1,) float64) for the by-position diagnostics, and per SAE the
    next-token agreement with the clean model ("top1_agree": positions whose top-1 token is the clean top-1;
    "top5_overlap": |top-5 ∩ clean top-5| / 5, summed), per sequence; zeros with `agreement` False (benchmarks).
    """
    batch, length = tokens.shape
    n_pos = length - 1
    predicting = mask[:, :-1].to(torch.float64)
    targets = tokens[:, 1:, None]
    new = lambda: torch.zeros(batch, dtype=torch.float64, device=tokens.device)  # noqa: E731
    per_position = lambda: torch.zeros(n_pos, dtype=torch.float64, device=tokens.device)  # noqa: E731
    clean_totals = {"n_pred": predicting.sum(1), "ce_clean": new()}
    clean_totals.update(pos_n_pred=predicting.sum(0), pos_ce_clean=per_position())
    site_totals = [{"ce_zero": new(), "kl_zero": new()} for _ in sites]
    sae_totals = [
        [
            {"ce_sae": new(), "kl_sae": new(), "top1_agree": new(), "top5_overlap": new()}
            | {"pos_ce_sae": per_position(), "pos_kl_sae": per_position()}
            for _ in site.spliced
        ]
        for site in sites
    ]
    # The last position predicts nothing.
    clean = clean[:, :-1]
    zeros = [site.zero[:, :-1] for site in sites]
    spliced = [[final[:, :-1] for final in site.spliced] for site in sites]
    whole_zeros = [
        _cached_zero(readout, zero, site.zero_key) if site.zero_key is not None and zero.shape[0] == 1 else None
        for site, zero in zip(sites, zeros, strict=True)
    ]

    for seqs, pos in _tiles(batch, n_pos, readout.d_vocab, tokens.device):
        weight, target = predicting[seqs, pos], targets[seqs, pos]
        clean_logits = readout.logits(clean[seqs, pos])
        p, lse_clean = _softmax_logsumexp(clean_logits)
        neg_entropy = torch.linalg.vecdot(p, clean_logits) - lse_clean
        ce_clean = _cross_entropy(clean_logits, lse_clean, target)
        clean_totals["ce_clean"][seqs] += _summed(ce_clean, weight)
        clean_totals["pos_ce_clean"][pos] += _position_sums(ce_clean, weight)
        clean_top = clean_logits.topk(TOP_K, dim=-1).indices if agreement else None
        del clean_logits

        for zero, whole, totals, finals, own in zip(zeros, whole_zeros, site_totals, spliced, sae_totals, strict=True):
            if whole is not None:
                zero_logits, lse_zero = whole[0][:, pos], whole[1][:, pos]
            else:
                zero_logits = readout.logits(zero[seqs if zero.shape[0] > 1 else slice(None), pos])
                lse_zero = _softmax_logsumexp(zero_logits)[1]
            totals["kl_zero"][seqs] += _summed(_kl(neg_entropy, p, zero_logits, lse_zero), weight)
            totals["ce_zero"][seqs] += _summed(_cross_entropy(zero_logits, lse_zero, target), weight)
            del zero_logits
            for final, sae in zip(finals, own, strict=True):
                logits = readout.logits(final[seqs, pos])
                lse = _softmax_logsumexp(logits)[1]
                kl, ce = _kl(neg_entropy, p, logits, lse), _cross_entropy(logits, lse, target)
                sae["kl_sae"][seqs] += _summed(kl, weight)
                sae["ce_sae"][seqs] += _summed(ce, weight)
                sae["pos_kl_sae"][pos] += _position_sums(kl, weight)
                sae["pos_ce_sae"][pos] += _position_sums(ce, weight)
                if agreement:
                    top1, overlap = _agreement(logits.topk(TOP_K, dim=-1).indices, clean_top)
                    sae["top1_agree"][seqs] += _summed(top1, weight)
                    sae["top5_overlap"][seqs] += _summed(overlap, weight)
    return clean_totals, site_totals, sae_totals


def _cross_entropy(logits: torch.Tensor, lse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """lse − logit[target] per position; logits of batch 1 broadcast over the target's sequences."""
    return lse - logits.expand(target.shape[0], -1, -1).gather(-1, target).squeeze(-1)


def _kl(neg_entropy: torch.Tensor, p: torch.Tensor, logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) per position from the clean side (Σ p·clean − lse_clean, p) and Q's logits and logsumexp;
    logits of batch 1 broadcast over the sequences."""
    return neg_entropy - (torch.linalg.vecdot(p, logits) - lse)


def _summed(per_position: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sequence float64 sums over predicting positions."""
    return (per_position.to(torch.float64) * weight).sum(1)


def _position_sums(per_position: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-position float64 sums over a tile's sequences, at predicting positions."""
    return (per_position.to(torch.float64) * weight).sum(0)


def _agreement(top: torch.Tensor, clean_top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 equal to the clean top-1, |top-k ∩ clean top-k| / k) per position, from (…, k) token indices.
    The top-k of logits with exact ties may order the tied tokens either way: an equal-logits tie is rare."""
    top1 = (top[..., 0] == clean_top[..., 0]).to(torch.float64)
    overlap = (top[..., :, None] == clean_top[..., None, :]).sum((-1, -2)).to(torch.float64) / top.shape[-1]
    return top1, overlap


def _tiles(batch: int, n_pos: int, d_vocab: int, device: torch.device):
    """(sequence slice, position slice) tiles of about TILE_ELEMENTS logits, covering (batch, n_pos)."""
    budget = TILE_ELEMENTS_CPU if torch.device(device).type == "cpu" else TILE_ELEMENTS_ACCELERATOR
    rows = max(1, budget // d_vocab)
    seq_step, pos_step = (max(1, rows // n_pos), n_pos) if rows >= n_pos else (1, rows)
    for s in range(0, batch, seq_step):
        for p in range(0, n_pos, pos_step):
            yield slice(s, s + seq_step), slice(p, p + pos_step)


def _softmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) and logsumexp(logits) from one fused softmax.

    The softmax's largest entry is exp(m − m)/S = 1/S, so lse = m + log S = m − log max_v p_v (about twice
    as fast on CPU as torch.logsumexp, which is not fused; the rounding of 1/S is ~1e-7 relative).
    """
    p = torch.softmax(logits, dim=-1)
    return p, logits.amax(dim=-1) - p.amax(dim=-1).log()


def _cached_zero(readout: Readout, zero: torch.Tensor, key: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-ablated logits (1, n_pos, vocab) and their logsumexp, computed once per site and context length."""
    n_pos = zero.shape[1]
    if (key, n_pos) not in readout.zero_cache:
        tiles = [readout.logits(zero[:, pos]) for _, pos in _tiles(1, n_pos, readout.d_vocab, zero.device)]
        logits = torch.cat(tiles, dim=1)
        readout.zero_cache[key, n_pos] = (logits, _softmax_logsumexp(logits)[1])
    return readout.zero_cache[key, n_pos]


class DownstreamAccumulator:
    """Sums one SAE's per-sequence totals over batches; `result()` gives CE losses, loss recovered, KL."""

    def __init__(self):
        self.positions = 0
        self.ce = dict.fromkeys(VARIANTS, 0.0)
        self.kl = {"sae": 0.0, "zero": 0.0}
        self.agreement = {"top1_agree": 0.0, "top5_overlap": 0.0}
        self.kl_random = 0.0  # the pathological check's (metrics/pathological.py); zero when it is off

    def update(self, totals: dict[str, torch.Tensor]) -> None:
        """Add a batch's per-sequence totals (`downstream_totals`'s shared totals and this SAE's own)."""
        self.positions += int(totals["n_pred"].sum())
        for variant in VARIANTS:
            self.ce[variant] += float(totals[f"ce_{variant}"].sum())
        for variant in self.kl:
            self.kl[variant] += float(totals[f"kl_{variant}"].sum())
        for name in self.agreement:
            self.agreement[name] += float(totals[name].sum())
        self.kl_random += float(totals["kl_random"].sum()) if "kl_random" in totals else 0.0

    def merge(self, other: DownstreamAccumulator) -> None:
        """Add another accumulator's sums (another rank's share of the data)."""
        self.positions += other.positions
        for variant in VARIANTS:
            self.ce[variant] += other.ce[variant]
        for variant in self.kl:
            self.kl[variant] += other.kl[variant]
        for name in self.agreement:
            self.agreement[name] += other.agreement[name]
        self.kl_random += other.kl_random

    def result(self) -> dict[str, float | None]:
        if self.positions == 0:
            return dict.fromkeys(DOWNSTREAM_KEYS + AGREEMENT_KEYS)
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
            "next_token_agreement": self.agreement["top1_agree"] / n,
            "top5_overlap": self.agreement["top5_overlap"] / n,
            "kl_div_random": self.kl_random / n if self.kl_random > 0 else None,
            "pathological_ratio": self.kl["sae"] / self.kl_random if self.kl_random > 0 else None,
        }
