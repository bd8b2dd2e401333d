"""Downstream metrics: cross-entropy and KL of the clean, spliced and zero-ablated model.

Definitions: ../shared/METRICS.md "Downstream". Predicting positions are every position but the last of
a sequence whose input token is unmasked; CE and KL are float64 sums over them, divided once at the end.

The replay hands over final residuals (what the unembedding reads), not logits: `downstream_totals`
unembeds them a tile of positions at a time, so no batch × vocabulary tensor ever exists. Each tile's logits,
softmax and products are written into buffers the `Readout` keeps for the whole pass (`Readout.buffer`): a
fresh tile-sized tensor (tens of MB at a 50k vocabulary) is mapped afresh from the OS and page-faulted on
every allocation, which on a CPU cost as much as the softmax itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from saehealth.result import AGREEMENT_KEYS, DOWNSTREAM_KEYS

VARIANTS = ("clean", "sae", "zero")
TOP_K = 5  # the next-token agreement's top-k overlap

# Tiles of positions, sized by memory rather than by a vocabulary. On CPU the unembedding's product dominates
# and runs faster the more positions it multiplies at once (GPT-2's W_U, 2 cores: 108 GFLOP/s at 256 positions,
# 127 at 1,016, 132 at 2,032), while the element-wise work on a tile streams from memory at any size beyond the
# cache (at the built-in model's 4,096 tokens, 1,024 positions are no slower than 512). So a tile has
# TILE_ROWS_CPU positions as long as its temporaries (about _TILE_COPIES float32 copies of the tile's logits) stay
# within TILE_BYTES_MAX; the buffers are kept for the whole pass (`Readout.buffer`). Accelerators: large tiles, so
# that kernel launches stay few.
TILE_ROWS_CPU = 1024
TILE_ELEMENTS_ACCELERATOR = 2**26
TILE_BYTES_MAX = 2**30
_TILE_COPIES = 4


def tile_rows(d_vocab: int, device: str | torch.device) -> int:
    """Positions per tile of logits at this vocabulary on this device type (see TILE_ROWS_CPU)."""
    most = max(1, TILE_BYTES_MAX // (_TILE_COPIES * 4 * d_vocab))
    if torch.device(device).type != "cpu":
        return max(1, min(most, TILE_ELEMENTS_ACCELERATOR // d_vocab))
    return max(1, min(most, TILE_ROWS_CPU))


@dataclass
class Readout:
    """Final residuals (..., d) → logits (..., d_vocab): the model's unembedding (identity for tests)."""

    unembed: Callable[[torch.Tensor], torch.Tensor]
    d_vocab: int
    # Zero-ablated logits and their logsumexp, by (site key, context length), for zero-ablated inputs of batch 1
    # (token-independent: the same for every batch of that length).
    zero_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # `unembed_into(final, out)`: the unembedding written into `out` (float32, the logits' shape), or None where
    # the unembedding cannot write into a buffer (another dtype, tests' identity).
    unembed_into: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    _buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def identity(cls, d_vocab: int) -> Readout:
        return cls(lambda logits: logits, d_vocab)

    def logits(self, final: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """float32 logits of `final` (..., d). `reuse`: into the "logits" buffer (valid until the next such call),
        where the unembedding can write into one."""
        if reuse and self.unembed_into is not None and final.dtype == torch.float32:
            return self.unembed_into(final, self.buffer("logits", (*final.shape[:-1], self.d_vocab), final.device))
        return self.unembed(final).float()

    def buffer(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 tensor of `shape` on `device` that lives across tiles: `name`'s storage is grown when too
        small and reused otherwise, so its contents last only until the next call for the same name."""
        size = 1
        for n in shape:
            size *= n
        held = self._buffers.get(name)
        if held is None or held.numel() < size or held.device != torch.device(device):
            held = self._buffers[name] = torch.empty(size, dtype=torch.float32, device=device)
        return held[:size].view(shape)


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
    clean_cache: dict | None = None,
    agreement: bool = True,
) -> tuple[dict, list[dict], list[list[dict]]]:
    """Per-sequence CE and KL totals for one batch, for every SAE of every site.

    clean: final residuals (batch, pos, d); tokens and mask (batch, pos). Returns float64 (batch,) tensors: the
    clean totals (n_pred, ce_clean), per site its zero ablation's (ce_zero, kl_zero), and per site and SAE its
    own (ce_sae, kl_sae): the per-position values of `score_tile`, summed over each sequence's predicting
    positions a tile at a time. `clean_cache` (a dict kept by the caller for this batch of tokens) keeps each
    tile's clean side, so that scoring other SAEs on the same batch later (a health monitor's checks) skips it.

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

    def add(totals: dict, values_at: dict, seqs: slice, pos: slice, weight: torch.Tensor) -> None:
        for name, values in values_at.items():
            totals[name][seqs] += _summed(values, weight)
            if f"pos_{name}" in totals:  # the by-position sums of CE and KL
                totals[f"pos_{name}"][pos] += _position_sums(values, weight)

    for seqs, pos in _tiles(batch, n_pos, readout.d_vocab, tokens.device):
        zero_tiles = [  # cached (logits, lse) of batch 1, or the zero ablation's final residuals
            (whole[0][:, pos], whole[1][:, pos])
            if whole is not None
            else zero[seqs if zero.shape[0] > 1 else slice(None), pos]
            for zero, whole in zip(zeros, whole_zeros, strict=True)
        ]
        key = (seqs.start, pos.start)
        side = clean_cache.get(key) if clean_cache is not None else None
        if side is None:  # p lives in a reused buffer unless the caller keeps it
            side = clean_side(readout, clean[seqs, pos], targets[seqs, pos], agreement, keep=clean_cache is not None)
            if clean_cache is not None:
                clean_cache[key] = side
        tile = score_tile(
            readout,
            side,
            zero_tiles,
            [[final[seqs, pos] for final in finals] for finals in spliced],
            targets[seqs, pos],
        )
        weight = predicting[seqs, pos]
        add(clean_totals, tile.clean, seqs, pos, weight)
        for totals, values_at in zip(site_totals, tile.sites, strict=True):
            add(totals, values_at, seqs, pos, weight)
        for own, per_site in zip(sae_totals, tile.saes, strict=True):
            for totals, values_at in zip(own, per_site, strict=True):
                add(totals, values_at, seqs, pos, weight)
    return clean_totals, site_totals, sae_totals


@dataclass
class TileScores:
    """Per-position values of one tile (sequences × positions): the clean model's, per site its zero ablation's,
    per site and SAE its own. Each maps a total's name to a (sequences, positions) tensor."""

    clean: dict[str, torch.Tensor]
    sites: list[dict[str, torch.Tensor]]
    saes: list[list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class CleanSide:
    """What every variant of a tile is scored against: the clean distribution p, Σ p·clean − lse_clean (the
    negative entropy), the clean CE, each per position, and the clean top-k tokens (None: no agreement)."""

    p: torch.Tensor  # (seqs, pos, d_vocab)
    neg_entropy: torch.Tensor  # (seqs, pos)
    ce_clean: torch.Tensor  # (seqs, pos)
    top: torch.Tensor | None  # (seqs, pos, TOP_K)


def clean_side(
    readout: Readout, clean: torch.Tensor, target: torch.Tensor, agreement: bool = True, keep: bool = False
) -> CleanSide:
    """The clean side of one tile from its final residuals (seqs, pos, d) and targets (seqs, pos, 1). Its p is
    in the readout's "p" buffer (valid until the next tile's clean side) unless `keep`."""
    clean_logits = readout.logits(clean, reuse=True)
    p_out = None if keep else readout.buffer("p", clean_logits.shape, clean_logits.device)
    p, lse_clean = _softmax_logsumexp(clean_logits, p_out)
    return CleanSide(
        p,
        _dot(readout, p, clean_logits) - lse_clean,
        _cross_entropy(clean_logits, lse_clean, target),
        clean_logits.topk(TOP_K, dim=-1).indices if agreement else None,
    )


def score_tile(
    readout: Readout,
    side: CleanSide,
    zeros: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    spliced: Sequence[Sequence[torch.Tensor]],
    target: torch.Tensor,
) -> TileScores:
    """CE and KL at every position of one tile: the one place where a tile's variant logits exist.

    side: the tile's clean side (`clean_side`); per site its zero ablation as final residuals (seqs or 1, pos, d)
    or as cached (logits, logsumexp) of batch 1; per site and SAE its spliced final residuals; target
    (seqs, pos, 1). With lse = logsumexp(logits) and p the clean distribution,
        CE      = lse − logit[next token]
        KL(P‖Q) = Σ_v p_v·clean_v − lse_clean − (Σ_v p_v·q_v − lse_q)
    so each variant costs one logsumexp and one row-wise dot product with p, and the clean side (p, its
    entropy) is computed once per tile for every SAE at every site.
    """
    p, neg_entropy = side.p, side.neg_entropy
    scores = TileScores({"ce_clean": side.ce_clean}, [], [])

    def variant(logits: torch.Tensor, lse: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
        kl = neg_entropy - (_dot(readout, p, logits) - lse)  # KL(P‖Q); logits of batch 1 broadcast
        return {f"ce_{kind}": _cross_entropy(logits, lse, target), f"kl_{kind}": kl}

    def spliced_variant(logits: torch.Tensor, lse: torch.Tensor) -> dict[str, torch.Tensor]:
        values = variant(logits, lse, "sae")
        if side.top is not None:
            top1, overlap = _agreement(logits.topk(TOP_K, dim=-1).indices, side.top)
            values |= {"top1_agree": top1, "top5_overlap": overlap}
        return values

    for zero, finals in zip(zeros, spliced, strict=True):
        zero_logits, lse_zero = zero if isinstance(zero, tuple) else _logits_lse(readout, zero)
        scores.sites.append(variant(zero_logits, lse_zero, "zero"))
        del zero_logits
        scores.saes.append([spliced_variant(*_logits_lse(readout, final)) for final in finals])
    return scores


def _logits_lse(readout: Readout, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A variant's logits (in the reused "logits" buffer: consumed before the next variant's) and logsumexp."""
    logits = readout.logits(final, reuse=True)
    return logits, _softmax_logsumexp(logits, readout.buffer("scratch", logits.shape, logits.device))[1]


def _cross_entropy(logits: torch.Tensor, lse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """lse − logit[target] per position; logits of batch 1 broadcast over the target's sequences."""
    return lse - logits.expand(target.shape[0], -1, -1).gather(-1, target).squeeze(-1)


def _dot(readout: Readout, p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_v p_v·logits_v per position (logits of batch 1 broadcast over p's sequences): a product into the readout's
    "scratch" buffer, then a sum, which on a CPU is several times faster than `torch.linalg.vecdot` (float32
    either way; the order of the additions differs, so the results differ in float noise)."""
    return torch.mul(p, logits, out=readout.buffer("scratch", p.shape, p.device)).sum(-1)


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
    """(sequence slice, position slice) tiles of `tile_rows` positions, covering (batch, n_pos)."""
    rows = tile_rows(d_vocab, device)
    seq_step, pos_step = (max(1, rows // n_pos), n_pos) if rows >= n_pos else (1, rows)
    for s in range(0, batch, seq_step):
        for p in range(0, n_pos, pos_step):
            yield slice(s, s + seq_step), slice(p, p + pos_step)


def _softmax_logsumexp(logits: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) (into `out` when given) and logsumexp(logits) from one fused softmax.

    The softmax's largest entry is exp(m − m)/S = 1/S, so lse = m + log S = m − log max_v p_v (about twice
    as fast on CPU as torch.logsumexp, which is not fused; the rounding of 1/S is ~1e-7 relative).
    """
    p = torch.softmax(logits, dim=-1) if out is None else torch.softmax(logits, dim=-1, out=out)
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
