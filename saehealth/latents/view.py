"""The one view of a result's latents that every report renders: the groups, and a card per latent with
its statistics, activation histogram, logit lens and contexts (token text plus each token's activation).

Built from the files beside a result (`result.latents.safetensors`, the details file) and, for token text,
the evaluation's own sequences and tokenizer. Without those (another machine, no network for a hub
dataset) the cards keep every number and say why the text is missing; without a latents file the view
says why there are no latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saehealth.config import DEFAULT_HTML_LATENTS
from saehealth.errors import SaeHealthError
from saehealth.latents.contexts import evaluation_sequences, window_bounds
from saehealth.latents.groups import LatentGroup, card_order, latent_groups
from saehealth.latents.store import LatentsFile, check_against_result, load_latents
from saehealth.result import EvalResult

DEFAULT_CARDS = DEFAULT_HTML_LATENTS  # --html-latents: latents with full cards in report.html


@dataclass
class Context:
    """One firing in context: the tokens around it and the latent's activation on each (None where not
    scored: outside the evaluation's masking)."""

    sequence: int
    position: int
    value: float
    tokens: list[str]  # decoded text (real spaces and newlines; see tokens.visible), '' when unavailable
    activations: list[float | None]
    focus: int  # index of the firing token in `tokens`
    before: bool = False  # the sequence has tokens before the window
    after: bool = False  # ... and after it


@dataclass
class LatentCard:
    """Everything shown about one latent."""

    latent: int
    firing_count: int
    density: float
    mean: float | None
    max: float | None
    histogram: list[tuple[float, float, int]]  # (low, high, count) over the occupied activation range
    promoted: list[tuple[str, float]]  # logit lens: token text, logit per unit activation
    suppressed: list[tuple[str, float]]
    top: list[Context]
    sample: list[Context]
    max_cosine: float | None = None
    nearest: int | None = None
    routed_layers: str | None = None  # routed SAEs: the share of this latent's firings at each routed layer
    layer_firings: list[tuple[str, int]] | None = None  # routed SAEs: (routed hook, firings there), in depth order
    dense_kind: str | None = None  # a dense latent's kind (metrics/dense_kinds.py), None when not dense
    token_share: float | None = None  # share of its activation variance the current token explains


@dataclass
class LatentView:
    """The groups and cards of one result; `unavailable` says why there are none, `notes` what is missing."""

    groups: list[LatentGroup] = field(default_factory=list)
    cards: dict[int, LatentCard] = field(default_factory=dict)
    d_sae: int = 0
    tokens_scored: int = 0
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)
    logit_lens_note: str | None = None

    def group(self, key: str) -> LatentGroup | None:
        return next((g for g in self.groups if g.key == key), None)


def load_view(
    result: EvalResult,
    folder: Path,
    details: Mapping | None = None,
    *,
    cards: int = DEFAULT_CARDS,
    ids: Iterable[int] = (),
) -> LatentView:
    """The latent view of the result saved in `folder`: groups, and cards for the latents `ids` plus up to
    `cards` latents chosen from the groups (see `groups.card_order`)."""
    from saehealth.result import load_details

    details = load_details(folder, result.sae.d_sae) if details is None else details
    latents, reason = load_latents(folder, result.request or None)
    if latents is not None:
        e = result.eval
        reason = check_against_result(latents, result.sae.d_sae, e.n_sequences, e.context_length)
        latents = None if reason is not None else latents
    if latents is None:
        groups = latent_groups(result, details)
        return LatentView(
            groups=groups, d_sae=result.sae.d_sae, tokens_scored=result.eval.tokens_scored, unavailable=reason
        )
    return build_view(result, details, latents, cards=cards, ids=ids)


def build_view(
    result: EvalResult, details: Mapping, latents: LatentsFile, *, cards: int = DEFAULT_CARDS, ids: Iterable[int] = ()
) -> LatentView:
    """The view from loaded arrays (see `load_view`)."""
    arrays = latents.arrays
    counts = arrays["firing_counts"].numpy()
    groups = latent_groups(result, details, counts)
    wanted = list(dict.fromkeys([*[int(i) for i in ids], *card_order(groups, cards)]))
    view = LatentView(
        groups=groups,
        d_sae=latents.d_sae,
        tokens_scored=latents.tokens,
        logit_lens_note=latents.logit_lens_reason,
    )
    if result.routing is not None and latents.has_logit_lens:
        from saehealth.routed.checks import routed_logit_lens_note

        view.notes.append(routed_logit_lens_note(result.routing.get("hooks") or []))
    for latent in wanted:
        if not 0 <= latent < latents.d_sae:
            raise SaeHealthError(f"Latent {latent} does not exist: this SAE has latents 0 to {latents.d_sae - 1}.")
    text, sequences = _token_source(result, arrays, wanted, view.notes)
    best = details.get("max_decoder_cosine")
    nearest = details.get("nearest_decoder_latent")
    by_layer = details.get("routing_latent_layer_counts")  # (d_sae, L), routed SAEs only
    hooks = (result.routing or {}).get("hooks")
    shares = details.get("token_explained_share")
    for latent in wanted:
        view.cards[latent] = LatentCard(
            latent=latent,
            firing_count=int(counts[latent]),
            density=float(counts[latent]) / max(latents.tokens, 1),
            mean=_number(arrays["activation_mean"][latent]),
            max=_number(arrays["activation_max"][latent]),
            histogram=_histogram(arrays["activation_histogram"][latent], arrays["activation_histogram_edges"]),
            promoted=_lens(arrays, "top", latent, text),
            suppressed=_lens(arrays, "bottom", latent, text),
            top=_contexts(arrays, "top", latent, latents.window, sequences, text),
            # A random sample, shown strongest first to read like the top list.
            sample=sorted(_contexts(arrays, "sample", latent, latents.window, sequences, text), key=lambda c: -c.value),
            max_cosine=_number(best[latent]) if best is not None else None,
            nearest=int(nearest[latent]) if nearest is not None and int(nearest[latent]) >= 0 else None,
            routed_layers=_routed_layers(by_layer, hooks, latent),
            layer_firings=None if by_layer is None or not hooks else _layer_firings(by_layer, hooks, latent),
            dense_kind=_dense_kind(details, latent),
            token_share=_number(shares[latent]) if shares is not None else None,
        )
    return view


def _routed_layers(by_layer, hooks: list[str] | None, latent: int) -> str | None:
    """'blocks.3.hook_resid_post 62%, blocks.7.hook_resid_post 38%': where a routed SAE's latent fired."""
    if by_layer is None or not hooks:
        return None
    counts = [float(c) for c in by_layer[latent]]
    total = sum(counts)
    if total == 0:
        return "never fired"
    return ", ".join(f"{hook} {count / total:.0%}" for hook, count in zip(hooks, counts, strict=True) if count > 0)


def _layer_firings(by_layer, hooks: list[str], latent: int) -> list[tuple[str, int]]:
    """(routed hook, the latent's firings on the tokens routed there) for every routed layer, in depth order."""
    return [(hook, int(count)) for hook, count in zip(hooks, by_layer[latent], strict=True)]


def _dense_kind(details: Mapping, latent: int) -> str | None:
    """The kind of a dense latent from the details' `dense_kind` (−1: not dense), None without it."""
    from saehealth.metrics.dense_kinds import KINDS

    kinds = details.get("dense_kind")
    if kinds is None or int(kinds[latent]) < 0:
        return None
    return KINDS[int(kinds[latent])]


def _token_source(result: EvalResult, arrays: Mapping, wanted: list[int], notes: list[str]):
    """(TokenText or None, sequences tensor or None) for the wanted latents' contexts and logit lens."""
    from saehealth.latents.tokens import TokenText, load_tokenizer

    try:
        text = TokenText(load_tokenizer(result.eval.model))
    except SaeHealthError as exc:
        notes.append(f"Token text is not shown: {exc}")
        return None, None
    if not wanted:
        return text, None
    index = torch.tensor(wanted)
    used = torch.cat([arrays["top_sequence"][index].reshape(-1), arrays["sample_sequence"][index].reshape(-1)])
    up_to = int(used.max()) if used.numel() else -1
    if up_to < 0:
        return text, None
    try:
        return text, evaluation_sequences(result, up_to)
    except SaeHealthError as exc:
        notes.append(f"Contexts are shown without their tokens: {exc}")
        return text, None


def _contexts(arrays: Mapping, kind: str, latent: int, radius: int, sequences, text) -> list[Context]:
    values = arrays[f"{kind}_values"][latent]
    seqs, positions = arrays[f"{kind}_sequence"][latent], arrays[f"{kind}_position"][latent]
    windows = arrays[f"{kind}_window"][latent].float()
    contexts = []
    for j in range(values.shape[0]):
        sequence, position = int(seqs[j]), int(positions[j])
        if sequence < 0:
            break  # slots fill best first: the rest are empty
        known = sequences is not None and text is not None
        length = sequences.shape[1] if known else position + radius + 1
        start, end = window_bounds(position, length, radius)
        acts = windows[j, start - position + radius : end - position + radius].tolist()
        tokens = [text.text(t) for t in sequences[sequence, start:end].tolist()] if known else [""] * (end - start)
        activations: list[float | None] = [a if math.isfinite(a) else None for a in acts]
        activations[position - start] = float(values[j])  # the firing's own value, unrounded
        contexts.append(
            Context(
                sequence, position, float(values[j]), tokens, activations, position - start, start > 0, end < length
            )
        )
    return contexts


def _lens(arrays: Mapping, side: str, latent: int, text) -> list[tuple[str, float]]:
    ids, values = arrays.get(f"logit_lens_{side}_ids"), arrays.get(f"logit_lens_{side}_values")
    if ids is None or values is None:
        return []
    return [
        (text.text(int(i)) if text is not None else f"<{int(i)}>", float(v))
        for i, v in zip(ids[latent].tolist(), values[latent].tolist(), strict=True)
    ]


def _histogram(counts: torch.Tensor, edges: torch.Tensor) -> list[tuple[float, float, int]]:
    counts_np = counts.numpy()
    occupied = np.flatnonzero(counts_np)
    if occupied.size == 0:
        return []
    lo, hi = occupied[0], occupied[-1]
    return [(float(edges[i]), float(edges[i + 1]), int(counts_np[i])) for i in range(lo, hi + 1)]


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
