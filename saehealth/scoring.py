"""The pass over the evaluation's tokens: every SAE of one model scored in one replay per batch.

`score_batches` takes any set of SAEs at any hooks of one model. Per batch the clean model runs once, each site's
zero ablation once, and each SAE splices its reconstruction in at its own hook (`replay.py`); the downstream
metrics then unembed every final residual a tile at a time, the clean side once for all SAEs
(`metrics/downstream.py`). Each SAE's `SAEScorer` (`sae_scorer.py`) encodes and decodes in token chunks sized from a memory budget,
so peak memory is set by the budget and not by batch × d_sae, and feeds its streaming accumulators.

Every accumulator merges exactly (`merge`), so torchrun ranks, each scoring its own shard of the sequences, are
combined on rank 0 into the numbers one process would give (`distributed.merge_on_first_rank`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import torch

from saehealth import distributed
from saehealth.data import special_token_mask
from saehealth.fused_gelu import fused_gelu
from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.downstream import SiteFinals, downstream_totals
from saehealth.metrics.pathological import RandomPerturbation, with_random_kl
from saehealth.quantities import paired_totals
from saehealth.replay import (
    ReplayCache,
    SAEOutputs,
    SiteGroup,
    SpliceSite,
    readout,
    replay_batch,
    sae_view,
    splice_site,
)
from saehealth.routed.member import RoutedMember
from saehealth.routed.passes import RoutedSite
from saehealth.sae_scorer import PassOutput, SAEScorer, Tally
from saehealth.saebench.sums import last_position_kl


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
    """The one pass over token batches for SAEs at any sites of one model: (site, SAE) pairs, in order; a routed
    SAE's site is its `routed.passes.RoutedSite` (the clean forward records its layers; its continuations are its
    own, `routed/member.py`), and its output carries the raw routing statistics in `routing`.

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
    # fused_gelu: GPT-2's GELU in one kernel for the pass (the model gets its own back afterwards).
    with distributed.step(), fused_gelu(model):  # a rank that fails here stops every rank before the merge below
        batches = iter(batches)
        first = next(batches, None)
        if first is not None:
            batches = itertools.chain([first], batches)
            if reference is None:
                reference = first[:1]
        tallies, paired, routed = _local_pass(
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
    own = [member.tallies() for member in routed.values()]  # each routed member's tallies, merged beside
    extra = [tally for member_tallies in own for tally in member_tallies]
    merged = distributed.merge_on_first_rank([*tallies, *extra] + ([] if paired is None else [paired]))
    if merged is None:
        return None
    if paired is not None:
        *merged, paired = merged
    merged, extra = merged[: len(tallies)], merged[len(tallies) :]
    outputs = [tally.output() for tally in merged]
    for output in outputs:
        output.paired = paired
    start = 0
    for (i, member), member_tallies in zip(routed.items(), own, strict=True):
        member.finish(outputs[i], *extra[start : start + len(member_tallies)])
        start += len(member_tallies)
    return outputs


def _local_pass(
    model, members, batches, include_special_tokens, device, advance, reference, examples, switches
) -> tuple[list[Tally], SequenceTotals | None, dict[int, RoutedMember]]:
    """This process's share of the pass: the tallies of its batches, the SAEs' paired per-sequence totals
    (None with one SAE or without diagnostics), and the routed members by index (their own tallies beside).
    `switches`: (diagnostics, agreement, pathological)."""
    diagnostics, agreement, pathological = switches
    scorers = [SAEScorer(sae, device, examples, diagnostics=diagnostics) for _, sae in members]
    routed = {
        i: RoutedMember(site, scorers[i], device) for i, (site, _) in enumerate(members) if isinstance(site, RoutedSite)
    }
    also = sorted({hook for member in routed.values() for hook in member.hooks})
    paired = paired_totals(len(members)) if diagnostics and len(members) > 1 else None
    here, local = distributed.ranks(), 0  # this rank's sequences so far: local j is sequence rank + j·world
    if reference is not None:
        _set_references(model, members, scorers, reference.to(device), include_special_tokens, routed)
    sites: dict[SpliceSite, list[int]] = {}  # SAEs at one site share its zero ablation
    for i, (site, _) in enumerate(members):
        if i not in routed:
            sites.setdefault(site, []).append(i)
    # With the pathological check, each SAE's random perturbation is spliced right after it: [s₁, p₁, s₂, p₂, …].
    perturbed = {site: pathological and not site.is_transcoder for site in sites}
    groups = [
        SiteGroup(site, [m for i in indices for m in (scorers[i], *[RandomPerturbation(scorers[i])] * perturbed[site])])
        for site, indices in sites.items()
    ]
    cache, unembedding = ReplayCache(), readout(model)
    for member in routed.values():
        member.attach()
    try:
        for tokens in batches:
            tokens = tokens.to(device)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            ids = here.rank + here.world_size * (local + torch.arange(tokens.shape[0], device=tokens.device))
            local += tokens.shape[0]
            for scorer in scorers:
                scorer.begin(ids, tokens)
            out = replay_batch(model, groups, tokens, mask, cache, also)
            site_members, flags, alone = list(sites.values()), [perturbed[site] for site in sites], {}
            for i, member in routed.items():  # each routed SAE is a site of its own, after the shared forward
                share = member.batch(model, out.clean, out.recorded, mask)
                if isinstance(share, SAEOutputs):  # soft routing: nothing spliced, nothing downstream
                    alone[i] = share
                else:
                    out.sites.append(share)
                    site_members.append([i])
                    flags.append(False)
            side_by_side = tally_batch(
                unembedding, site_members, scorers, out, tokens, mask, perturbed=flags, agreement=agreement
            )
            for i, share in alone.items():
                totals = scorers[i].update(share, None, mask)
                side_by_side.update({f"{i}/{name}": value for name, value in totals.items()})
            if paired is not None:
                paired.update(side_by_side)
            if advance is not None:
                advance(tokens.numel())
    finally:
        for member in routed.values():
            member.detach()
        for scorer in scorers:
            scorer.restore()
    return [scorer.tally for scorer in scorers], paired, routed


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


def _set_references(
    model, members, scorers, tokens: torch.Tensor, include_special_tokens: bool, routed: dict[int, RoutedMember]
) -> None:
    """Give every SAE's reconstruction accumulator the mean activation of `tokens` (one sequence) at its spliced
    hook (a routed SAE: of its routed input y) as its reference mean, so that every torchrun rank accumulates
    about the same one."""
    single = [
        (site, scorer) for i, ((site, _), scorer) in enumerate(zip(members, scorers, strict=True)) if i not in routed
    ]
    layered = [site for site, _ in single] + [splice_site(h) for m in routed.values() for h in m.hooks]
    hooks = {site.hook_name for site in layered} | {site.input_hook for site in layered}
    layers = [site.layer for site in layered]
    # Only as far as the deepest hook: at a 50k vocabulary the unembedding alone costs as much as a few blocks.
    stop = max(layers) + 1 if None not in layers else None
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in hooks, stop_at_layer=stop)
    mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
    for member in routed.values():
        member.set_reference({hook: cache[hook] for hook in member.hooks}, mask)
    for site, scorer in single:
        x = sae_view(cache[site.hook_name], site.head_dims, site.head_index)
        scorer.tally.reconstruction.set_reference(x, mask)
        # What the SAE reads (a transcoder's input hook) picks its antipodal candidates.
        scorer.choose_pairs(sae_view(cache[site.input_hook], site.input_head_dims, site.head_index), mask)
