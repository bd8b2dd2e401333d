"""The pass over the evaluation's tokens: every SAE of one model scored in one replay per batch.

`score_batches` takes any set of SAEs at any hooks of one model. Per batch the clean model runs once, each site's
zero ablation once, and each SAE splices its reconstruction in at its own hook (`replay.py`); the downstream
metrics then unembed every final residual a tile at a time, the clean side once for all SAEs
(`metrics/downstream.py`). Each SAE's `SAEScorer` encodes and decodes in token chunks sized from a memory budget,
so peak memory is set by the budget and not by batch × d_sae, and feeds its streaming accumulators.

Every accumulator merges exactly (`merge`), so torchrun ranks, each scoring its own shard of the sequences, are
combined on rank 0 into the numbers one process would give (`distributed.merge_on_first_rank`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from saehealth import distributed
from saehealth.data import special_token_mask
from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.dense_kinds import LatentPositionSums, candidate_pairs
from saehealth.metrics.diagnostics import pass_diagnostics
from saehealth.metrics.downstream import DownstreamAccumulator, SiteFinals, downstream_totals
from saehealth.metrics.firings import find_firings
from saehealth.metrics.latents import LatentExamples, token_locations
from saehealth.metrics.pathological import RandomPerturbation, with_random_kl
from saehealth.metrics.positions import PositionAccumulator
from saehealth.metrics.reconstruction import ReconstructionAccumulator
from saehealth.metrics.sparsity import SparsityAccumulator
from saehealth.metrics.token_explained import TokenSums
from saehealth.quantities import DOWNSTREAM_QUANTITIES, RATIO_METRICS, SEQUENCE_QUANTITIES, paired_totals
from saehealth.replay import ReplayCache, SAEOutputs, SiteGroup, SpliceSite, readout, replay_batch, sae_view
from saehealth.saebench.sums import SAEBenchSums, last_position_kl

# Memory for one chunk of an SAE's latents: a chunk holds the pre-activations, the activations and the temporaries
# of the sparsity statistics, about four float32 copies of (tokens, d_sae).
CHUNK_BYTES_CPU = 2**28
CHUNK_BYTES_ACCELERATOR = 2**30
_COPIES_PER_LATENT = 4
# From this width on, SAELens TopK SAEs hand over their latents as sparse (positions, d_sae) tensors: the decoder
# multiplies k rows per position instead of d_sae, and the sparsity statistics count k entries (2× faster at
# 65,536 latents on a CPU; slower than dense at 4,096).
SPARSE_FROM_D_SAE = 16384


@dataclass
class PassOutput:
    """One SAE's accumulated state after the pass, turned into numbers."""

    metrics: dict
    uncertainty: dict
    details: dict
    n_sequences: int
    tokens_run: int
    tokens_scored: int
    saebench: dict = field(default_factory=dict)  # SAEBench's definitions, where they differ (saebench/sums.py)
    latents: LatentExamples | None = None  # the latent examples (None with --examples 0)
    routing: dict | None = None  # routed SAEs: the routing statistics (saehealth/routed/stats.py)
    # The diagnostics beyond the averages (docs/diagnostics.md): by_position, dense_kinds, token_explained.
    diagnostics: dict = field(default_factory=dict)
    # Per-sequence totals of every SAE of the pass side by side, for paired differences (comparison_differences.py);
    # the same object for every output of one pass, None with a single SAE.
    paired: SequenceTotals | None = None


@dataclass
class Tally:
    """One SAE's accumulators: everything the pass adds up, and one exact `merge` for all of it."""

    reconstruction: ReconstructionAccumulator
    downstream: DownstreamAccumulator
    sparsity: SparsityAccumulator
    saebench: SAEBenchSums
    latents: LatentExamples | None = None
    totals: SequenceTotals = field(default_factory=lambda: SequenceTotals(SEQUENCE_QUANTITIES))
    # The diagnostics' sums (None when the pass runs without them): by position, per latent and position, per
    # latent and token.
    positions: PositionAccumulator | None = None
    latent_positions: LatentPositionSums | None = None
    token_sums: TokenSums | None = None
    n_sequences: int = 0
    tokens_run: int = 0

    def merge(self, other: Tally) -> None:
        self.reconstruction.merge(other.reconstruction)
        self.downstream.merge(other.downstream)
        self.sparsity.merge(other.sparsity)
        self.saebench.merge(other.saebench)
        if self.latents is not None:
            self.latents.merge(other.latents)
        self.totals.merge(other.totals)
        for name in ("positions", "latent_positions", "token_sums"):
            if getattr(self, name) is not None:
                getattr(self, name).merge(getattr(other, name))
        self.n_sequences += other.n_sequences
        self.tokens_run += other.tokens_run

    def output(self) -> PassOutput:
        d_out = self.reconstruction.d_in
        metrics: dict = {}
        metrics.update(self.reconstruction.result())
        metrics.update(self.downstream.result())
        metrics.update(self.sparsity.result())
        uncertainty = {key: self.totals.ratio(num, den)[1] for key, (num, den) in RATIO_METRICS.items()}
        saebench, per_latent = self.saebench.result(d_out)
        details = {
            "feature_density": self.sparsity.density(),
            "firing_counts": self.sparsity.firing_counts,
            "l0_histogram": self.sparsity.l0_histogram,
            **per_latent,
        }
        tokens = self.sparsity.tokens
        output = PassOutput(
            metrics, uncertainty, details, self.n_sequences, self.tokens_run, tokens, saebench, self.latents
        )
        if self.positions is not None:
            output.diagnostics, per_latent, kinds = pass_diagnostics(
                self.positions, self.latent_positions, self.token_sums, self.sparsity
            )
            details.update(per_latent)
            metrics.update(kinds)
        return output


def chunk_tokens(d_sae: int, device: str | torch.device) -> int:
    """Tokens per chunk of an SAE's encode/decode, from the memory budget of the device type."""
    budget = CHUNK_BYTES_CPU if torch.device(device).type == "cpu" else CHUNK_BYTES_ACCELERATOR
    return max(1, budget // (d_sae * 4 * _COPIES_PER_LATENT))


class SAEScorer:
    """One SAE during the pass: its chunked reconstruction (a `replay.Splice`) and its accumulators."""

    def __init__(
        self,
        sae,
        device: str | torch.device = "cpu",
        examples: int = 0,
        chunk: int | None = None,
        diagnostics: bool = True,
    ):
        self.sae = sae
        d_out = int(getattr(sae.cfg, "d_out", sae.cfg.d_in))
        d_sae = int(sae.cfg.d_sae)
        latents = LatentExamples(d_sae, examples, device=device) if examples else None
        self.tally = Tally(
            ReconstructionAccumulator(d_out),
            DownstreamAccumulator(),
            SparsityAccumulator(d_sae),
            SAEBenchSums(d_sae),
            latents,
        )
        if diagnostics:  # the diagnostics beyond the averages (docs/diagnostics.md)
            self.tally.positions = PositionAccumulator(d_out)
            self.tally.latent_positions = LatentPositionSums(d_sae)  # pairs: `choose_pairs`
            self.tally.token_sums = TokenSums(d_sae)
        self._tokens: torch.Tensor | None = None  # this batch's token ids, when there is a model
        self.chunk = chunk or chunk_tokens(d_sae, device)
        self._l0: torch.Tensor | None = None  # this batch's per-position L0, from `reconstruct`
        self._sequence_ids: torch.Tensor | None = None  # this batch's sequences in the evaluation's order
        # We flatten attention heads ourselves (and need the flat x for the metrics), as SAELens' evals do.
        self._reshaping = bool(getattr(sae, "hook_z_reshaping_mode", False))
        if self._reshaping:
            sae.turn_off_forward_pass_hook_z_reshaping()
        self._dense_activation = _use_sparse_topk(sae)
        sae.eval()

    def choose_pairs(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Pick the antipodal candidate pairs (metrics/dense_kinds.py) from the reference sequence x (1, pos, d_in),
        which every torchrun rank shares; nothing without the diagnostics."""
        if self.tally.latent_positions is None:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            acts = self.sae.encode(x.reshape(-1, x.shape[-1]).to(self.sae.dtype))
        self.tally.latent_positions.set_pairs(candidate_pairs(self.sae.W_dec, acts, mask.reshape(-1)))

    def begin(self, sequence_ids: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        """The next batch's sequences (batch,), numbered in the evaluation's own order: where latent examples
        are found, so that reports recover their tokens; and its token ids (batch, pos), for the token-explained
        shares (None from an activation cache, which has none)."""
        self._sequence_ids = sequence_ids
        self._tokens = tokens
        self.sequence_ids = sequence_ids.cpu()  # the pathological check's random directions are seeded by them

    def reconstruct(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x̂ for x = `source` (batch, pos, d_in), encoded and decoded a chunk of whole sequences at a time (at least
        one, whatever the budget); the latents of each chunk go to the latent statistics and are dropped."""
        length = source.shape[1]
        flat, flat_mask = source.reshape(-1, source.shape[-1]).to(self.sae.dtype), mask.reshape(-1)
        step = max(1, self.chunk // length) * length  # whole sequences: per-sequence latent counts stay exact
        parts, l0 = [], []
        examples = self.tally.latents
        if examples is not None:
            sequences, positions = token_locations(*mask.shape, 0, mask.device)
            sequences = self._sequence_ids.to(mask.device)[sequences].reshape(-1)
            positions = positions.reshape(-1)
        for start in range(0, flat.shape[0], step):
            chunk_mask = flat_mask[start : start + step]
            with warnings.catch_warnings():  # torch notes once that it skips checks of the sparse tensor's indices
                warnings.filterwarnings("ignore", message="Sparse invariant checks")
                feature_acts = self.sae.encode(flat[start : start + step])
            parts.append(self.sae.decode(feature_acts))
            found = find_firings(feature_acts, chunk_mask)  # one scan for every latent statistic
            l0.append(self.tally.sparsity.update(feature_acts, chunk_mask, found))
            self.tally.saebench.update_latents(feature_acts, chunk_mask, length, found)
            if self.tally.latent_positions is not None:
                self.tally.latent_positions.update(found, start, length)
                if self._tokens is not None:
                    self.tally.token_sums.update(found, self._tokens.reshape(-1)[start : start + step], chunk_mask)
            if examples is not None:
                end = start + step
                dense = feature_acts.to_dense() if feature_acts.is_sparse else feature_acts
                examples.update(dense, chunk_mask, sequences[start:end], positions[start:end], found)
            del feature_acts
        self._l0 = torch.cat(l0).reshape(mask.shape)
        x_hat = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.last_x_hat = x_hat.reshape(*source.shape[:-1], x_hat.shape[-1])  # for the pathological check
        return self.last_x_hat

    @property
    def batch_l0(self) -> torch.Tensor:
        """The last `reconstruct` call's L0 per position (batch, pos), masked positions included."""
        return self._l0

    def update(
        self, out: SAEOutputs, downstream: dict[str, torch.Tensor] | None, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Add a batch: this SAE's outputs, its downstream per-sequence totals and the mask. Without a model
        (`downstream` None: an activation cache) nothing was predicted, and its downstream totals are zero.
        Returns the batch's per-sequence totals (SEQUENCE_QUANTITIES)."""
        tally = self.tally
        if downstream is not None:
            tally.downstream.update(downstream)
            # A pass without the pathological check (the routed pass) hands over no "kl_random": zero, not measured.
            downstream = {"kl_random": torch.zeros_like(downstream["kl_sae"]), **downstream}
            per_sequence = {key: downstream[key] for key in DOWNSTREAM_QUANTITIES}
        else:
            per_sequence = {key: torch.zeros(mask.shape[0]) for key in DOWNSTREAM_QUANTITIES}
        tally.saebench.update_batch(out.x, out.x_hat, mask, downstream)
        reconstruction = tally.reconstruction.update(out.x, out.x_hat, mask)
        per_sequence.update(sse=reconstruction["sse"], sst=reconstruction["sst"])
        per_sequence.update(n_tokens=mask.sum(1), l0=self._l0.sum(1))
        tally.totals.update(per_sequence)
        if tally.positions is not None:
            tally.positions.update_reconstruction(reconstruction, mask, self._l0, tally.reconstruction.reference)
            if downstream is not None:
                tally.positions.update_downstream(
                    {name: downstream[f"pos_{name}"] for name in ("n_pred", "ce_clean", "ce_sae", "kl_sae")}
                )
        tally.n_sequences += mask.shape[0]
        tally.tokens_run += mask.numel()
        return per_sequence

    def restore(self) -> None:
        """Undo what scoring changed on the SAE."""
        if self._reshaping:
            self.sae.turn_on_forward_pass_hook_z_reshaping()
        if self._dense_activation is not None:
            self.sae.activation_fn = self._dense_activation


def _use_sparse_topk(sae):
    """For a wide SAELens TopK SAE (its own TopK activation, not a subclass's), switch the activation to SAELens'
    sparse output; returns the dense activation to restore afterwards, or None when nothing was changed."""
    from sae_lens.saes.topk_sae import TopK

    activation = getattr(sae, "activation_fn", None)
    if type(activation) is not TopK or activation.use_sparse_activations or sae.cfg.d_sae < SPARSE_FROM_D_SAE:
        return None
    sae.activation_fn = TopK(activation.k, use_sparse_activations=True)
    return activation


@torch.no_grad()
def score_batches(
    model,
    members: Sequence[tuple[SpliceSite, object]],
    batches: Iterable[torch.Tensor],
    include_special_tokens: bool = False,
    device: str = "cpu",
    advance: Callable[[int], None] | None = None,
    reference: torch.Tensor | None = None,
    examples: int = 0,
    diagnostics: bool = True,
    agreement: bool = True,
    pathological: bool = False,
) -> list[PassOutput] | None:
    """The one pass over token batches for SAEs at any sites of one model: (site, SAE) pairs, in order.

    Each batch is replayed once (one clean forward, one zero ablation per site) and every SAE's spliced
    continuation feeds its own accumulators. Returns one `PassOutput` per member, in order. Under torchrun each
    rank passes its own shard of the batches (sequence i to rank i mod N) and the same `reference` (the
    evaluation's first sequence, (1, ctx)); the accumulators are merged on rank 0, which gets the outputs (the
    other ranks get None). With `examples` above 0, each SAE keeps that many top activations per latent (and a
    sample of half as many: metrics/latents.py). `diagnostics` False leaves out the diagnostics beyond the
    averages (by position, dense-latent kinds, token-explained shares, paired totals) and `agreement` False the
    next-token agreement (its sums stay zero): for benchmarks (scripts/bench_diagnostics.py). `pathological` adds
    the random-perturbation continuation of each SAE (metrics/pathological.py; not for transcoders).
    """
    with distributed.step():  # a rank that fails here stops every rank before the merge below
        batches = iter(batches)
        first = next(batches, None)
        if first is not None:
            batches = itertools.chain([first], batches)
            if reference is None:
                reference = first[:1]
        tallies, paired = _local_pass(
            model,
            members,
            batches,
            include_special_tokens,
            device,
            advance,
            reference,
            examples,
            (diagnostics, agreement, pathological),
        )
    merged = distributed.merge_on_first_rank(tallies if paired is None else [*tallies, paired])
    if merged is None:
        return None
    if paired is not None:
        *merged, paired = merged
    outputs = [tally.output() for tally in merged]
    for output in outputs:
        output.paired = paired
    return outputs


def _local_pass(
    model, members, batches, include_special_tokens, device, advance, reference, examples, switches
) -> tuple[list[Tally], SequenceTotals | None]:
    """This process's share of the pass: the tallies of its batches, and the SAEs' paired per-sequence totals
    (None with one SAE or without diagnostics). `switches`: (diagnostics, agreement, pathological)."""
    diagnostics, agreement, pathological = switches
    scorers = [SAEScorer(sae, device, examples, diagnostics=diagnostics) for _, sae in members]
    paired = paired_totals(len(members)) if diagnostics and len(members) > 1 else None
    here, local = distributed.ranks(), 0  # this rank's sequences so far: local j is sequence rank + j·world
    if reference is not None:
        _set_references(model, members, scorers, reference.to(device), include_special_tokens)
    sites: dict[SpliceSite, list[int]] = {}  # SAEs at one site share its zero ablation
    for i, (site, _) in enumerate(members):
        sites.setdefault(site, []).append(i)
    # With the pathological check, each SAE's random perturbation is spliced right after it: [s₁, p₁, s₂, p₂, …].
    perturbed = {site: pathological and not site.is_transcoder for site in sites}
    groups = [
        SiteGroup(site, [m for i in indices for m in (scorers[i], *[RandomPerturbation(scorers[i])] * perturbed[site])])
        for site, indices in sites.items()
    ]
    cache, unembedding = ReplayCache(), readout(model)
    try:
        for tokens in batches:
            tokens = tokens.to(device)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            ids = here.rank + here.world_size * (local + torch.arange(tokens.shape[0], device=tokens.device))
            local += tokens.shape[0]
            for scorer in scorers:
                scorer.begin(ids, tokens)
            out = replay_batch(model, groups, tokens, mask, cache)
            side_by_side = tally_batch(
                unembedding,
                list(sites.values()),
                scorers,
                out,
                tokens,
                mask,
                perturbed=[perturbed[site] for site in sites],
                agreement=agreement,
            )
            if paired is not None:
                paired.update(side_by_side)
            if advance is not None:
                advance(tokens.numel())
    finally:
        for scorer in scorers:
            scorer.restore()
    return [scorer.tally for scorer in scorers], paired


def tally_batch(
    unembedding,
    site_members: list[list[int]],
    scorers: list[SAEScorer],
    out,
    tokens,
    mask,
    clean_cache=None,
    *,
    perturbed: list[bool] | None = None,
    agreement: bool = True,
) -> dict[str, torch.Tensor]:
    """Add one replayed batch (`replay.BatchOutputs`) to the scorers: the downstream totals of every SAE at every
    site (`site_members[j]`: the scorers of site j, in `out.sites` order), then each scorer's own update.
    `clean_cache`: the batch's clean side, kept across calls (metrics/downstream.py `downstream_totals`).
    `perturbed[j]`: site j's SAEs each come with their random perturbation right after them ([s₁, p₁, s₂, p₂, …],
    the pathological check). Returns the scorers' per-sequence totals side by side, keyed "i/name"."""
    perturbed = perturbed or [False] * len(out.sites)
    noise = [o.saes[1::2] if p else [] for o, p in zip(out.sites, perturbed, strict=True)]
    for o, p in zip(out.sites, perturbed, strict=True):
        o.saes = o.saes[::2] if p else o.saes
    spliced = [[s.final for s in o.saes] + [s.final for s in n] for o, n in zip(out.sites, noise, strict=True)]
    both = [SiteFinals(o.zero, o.zero_key, f) for o, f in zip(out.sites, spliced, strict=True)]
    clean, per_site, per_sae = downstream_totals(
        unembedding, out.clean, both, tokens, mask, clean_cache, agreement=agreement
    )
    per_sae = [with_random_kl(own, len(o.saes)) for own, o in zip(per_sae, out.sites, strict=True)]
    finals = [SiteFinals(o.zero, o.zero_key, [s.final for s in o.saes]) for o in out.sites]
    for site, site_totals, sae_totals in zip(finals, per_site, per_sae, strict=True):  # SAEBench's KL
        last_shared, last_own = last_position_kl(unembedding, out.clean, site.zero, site.spliced, mask)
        site_totals.update(last_shared)
        for totals, last in zip(sae_totals, last_own, strict=True):
            totals.update(last)
    side_by_side = {}
    for indices, site_out, site_totals, sae_totals in zip(site_members, out.sites, per_site, per_sae, strict=True):
        for i, sae_out, own in zip(indices, site_out.saes, sae_totals, strict=True):
            totals = scorers[i].update(sae_out, {**clean, **site_totals, **own}, mask)
            side_by_side.update({f"{i}/{name}": value for name, value in totals.items()})
    return side_by_side


def _set_references(model, members, scorers, tokens: torch.Tensor, include_special_tokens: bool) -> None:
    """Give every SAE's reconstruction accumulator the mean activation of `tokens` (one sequence) at its spliced
    hook as its reference mean, so that every torchrun rank accumulates about the same one."""
    hooks = {site.hook_name for site, _ in members} | {site.input_hook for site, _ in members}
    layers = [site.layer for site, _ in members]
    # Only as far as the deepest hook: at a 50k vocabulary the unembedding alone costs as much as a few blocks.
    stop = max(layers) + 1 if None not in layers else None
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in hooks, stop_at_layer=stop)
    mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
    for (site, _), scorer in zip(members, scorers, strict=True):
        x = sae_view(cache[site.hook_name], site.head_dims, site.head_index)
        scorer.tally.reconstruction.set_reference(x, mask)
        # What the SAE reads (a transcoder's input hook) picks its antipodal candidates.
        scorer.choose_pairs(sae_view(cache[site.input_hook], site.input_head_dims, site.head_index), mask)
