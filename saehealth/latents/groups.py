"""Which latents to look at: groups, each tied to the health finding it explains.

dense       the densest latents (those above 10% density first), unexplained ones before position-tracking,
            antipodal and first-token ones (docs/diagnostics.md): dense_unexplained_fraction
tokens      token detectors: latents whose activation the current token explains (≥ 90%): token_detector_fraction
dead        latents that never fired (ids only): dead_fraction
duplicates  near-duplicate decoder pairs (cosine > 0.9), else the closest pairs: near_duplicate_latents
absorption  per absorbed letter, its main latents and the latents that take over: absorption_fraction
high, low   the highest- and lowest-density latents that fired
random      a seeded random sample of latents that fired: the honest view of typical quality
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from saehealth.metrics.geometry import NEAR_DUPLICATE_COSINE
from saehealth.metrics.sparsity import DENSE_THRESHOLD
from saehealth.report.text import as_numpy, format_density, format_value
from saehealth.result import EvalResult

GROUP_KEYS = ("dense", "dead", "duplicates", "absorption", "tokens", "high", "low", "random")
GROUP_SIZE = 10  # members of the high, low and random groups (and the densest when none is dense)
CLOSEST_PAIRS = 3  # pairs shown when no pair is a near-duplicate


@dataclass
class LetterAbsorption:
    """One absorbed letter: its main latents (k-sparse probe) and the latents that absorb it."""

    letter: str
    fraction: float
    main: list[int]
    absorbing: list[int]


@dataclass
class LatentGroup:
    """A list of latents tied to the finding it explains. `latents` holds every member in display order
    (pairs and letters flattened); `pairs` and `letters` the structure of the duplicates and absorption
    groups."""

    key: str
    title: str
    finding: str
    latents: list[int]
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    letters: list[LetterAbsorption] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.latents)


def latent_groups(result: EvalResult, details: Mapping, counts: np.ndarray | None = None) -> list[LatentGroup]:
    """The groups for this result, in report order; a group the result has no data for is left out.
    `counts` (per-latent firing counts) default to the details' `firing_counts`."""
    counts = as_numpy(details.get("firing_counts")) if counts is None else np.asarray(counts, dtype=np.float64)
    groups: list[LatentGroup] = []
    if counts is not None and counts.size:
        T = max(result.eval.tokens_scored, 1)
        density = counts / T
        alive = np.flatnonzero(counts > 0)
        groups += [_dense(result, density, details), _dead(result, counts)]
        groups += _duplicates(result, details)
        groups += _absorption(result, details)
        groups += _token_detectors(details, density)
        by_density = alive[np.argsort(-density[alive], kind="stable")]
        groups.append(
            LatentGroup(
                "high", "Highest-density latents", "the latents that fired most often", _ints(by_density[:GROUP_SIZE])
            )
        )
        groups.append(
            LatentGroup(
                "low",
                "Lowest-density latents that fired",
                f"the rarest latents that fired at all (down to {format_density(density[by_density[-1]]) if alive.size else '—'})",
                _ints(by_density[::-1][:GROUP_SIZE]),
            )
        )
        rng = np.random.default_rng(result.eval.seed)
        sample = rng.choice(alive, size=min(GROUP_SIZE, alive.size), replace=False) if alive.size else alive
        groups.append(
            LatentGroup(
                "random",
                "Random latents that fired",
                f"{len(sample)} latents drawn at random (seed {result.eval.seed}) from the {alive.size:,} that fired: "
                "typical quality, not the extremes",
                _ints(np.sort(sample)),
            )
        )
    else:
        groups += _duplicates(result, details) + _absorption(result, details)
    return [g for g in groups if g.latents or g.key == "dead"]


def card_order(groups: list[LatentGroup], limit: int) -> list[int]:
    """Up to `limit` distinct latents to give cards, taken from the groups in turn (one from each, then
    the next from each...), so every group is represented however small the budget. Dead latents get no
    card: they never fired."""
    queues = [list(g.latents) for g in groups if g.key != "dead"]
    chosen: dict[int, None] = {}
    while len(chosen) < limit and any(queues):
        for queue in queues:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < limit:
                chosen[queue.pop(0)] = None
    return list(chosen)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _dense(result: EvalResult, density: np.ndarray, details: Mapping) -> LatentGroup:
    order = np.argsort(-density, kind="stable")
    dense = order[density[order] > DENSE_THRESHOLD]
    fraction = result.metrics.get("dense_fraction")
    if dense.size:
        finding = (
            f"dense_fraction {format_value('dense_fraction', fraction)}: {dense.size:,} latents fire on more than "
            f"{DENSE_THRESHOLD:.0%} of tokens"
        )
        kinds = as_numpy(details.get("dense_kind"))
        if kinds is not None and kinds.size == density.size:
            from saehealth.metrics.dense_kinds import KINDS

            # Unexplained first (what the verdict counts), then the explained kinds; densest first within each.
            rank = {KINDS.index("unexplained"): 0, **{i: i + 1 for i in range(len(KINDS) - 1)}}
            dense = np.array(sorted(dense, key=lambda i: rank[int(kinds[i])]), dtype=np.int64)
            counts = {name: int((kinds[dense] == i).sum()) for i, name in enumerate(KINDS)}
            finding += ": " + ", ".join(f"{n:,} {name.replace('_', ' ')}" for name, n in counts.items() if n)
        return LatentGroup("dense", "Dense latents", finding, _ints(dense))
    top = order[density[order] > 0][:GROUP_SIZE]
    return LatentGroup(
        "dense",
        "Densest latents",
        f"no latent fires on more than {DENSE_THRESHOLD:.0%} of tokens; the densest",
        _ints(top),
    )


def _token_detectors(details: Mapping, density: np.ndarray) -> list[LatentGroup]:
    """Latents whose activation the current token explains (≥ TOKEN_DETECTOR_SHARE), densest first."""
    from saehealth.metrics.token_explained import TOKEN_DETECTOR_SHARE

    shares = as_numpy(details.get("token_explained_share"))
    if shares is None or shares.size != density.size:
        return []
    found = np.flatnonzero(np.nan_to_num(shares, nan=0.0) >= TOKEN_DETECTOR_SHARE)
    found = found[np.argsort(-density[found], kind="stable")]
    finding = (
        f"{found.size:,} latents whose activation the current token alone explains (≥ {TOKEN_DETECTOR_SHARE:.0%} of "
        "its variance): token detectors rather than features"
    )
    return [LatentGroup("tokens", "Token detectors", finding, _ints(found))]


def _dead(result: EvalResult, counts: np.ndarray) -> LatentGroup:
    dead = np.flatnonzero(counts == 0)
    T = result.eval.tokens_scored
    finding = (
        f"dead_fraction {format_value('dead_fraction', result.metrics.get('dead_fraction'))}: {dead.size:,} latents "
        f"never fired in T = {T:,} tokens"
    )
    return LatentGroup("dead", "Dead latents", finding, _ints(dead))


def _duplicates(result: EvalResult, details: Mapping) -> list[LatentGroup]:
    best, nearest = as_numpy(details.get("max_decoder_cosine")), details.get("nearest_decoder_latent")
    if best is None or nearest is None:
        return []
    nearest = np.asarray(nearest.cpu() if hasattr(nearest, "cpu") else nearest, dtype=np.int64)
    order = np.argsort(-best, kind="stable")
    close = order[best[order] > NEAR_DUPLICATE_COSINE]
    near = close.size > 0
    pairs: dict[tuple[int, int], float] = {}
    for i in close if near else order:
        j = int(nearest[i])
        if j >= 0:
            pairs.setdefault((min(int(i), j), max(int(i), j)), float(best[i]))
        if not near and len(pairs) >= CLOSEST_PAIRS:
            break
    listed = [(a, b, c) for (a, b), c in pairs.items()]
    count = result.metrics.get("near_duplicate_latents")
    if near:
        title = "Near-duplicate latents"
        finding = (
            f"near_duplicate_latents {format_value('near_duplicate_latents', count)}: {len(listed):,} pairs of decoder "
            f"directions with cosine > {NEAR_DUPLICATE_COSINE}"
        )
    else:
        title = "Closest decoder pairs"
        finding = f"no two decoder directions have cosine > {NEAR_DUPLICATE_COSINE}; the closest pairs"
    return [LatentGroup("duplicates", title, finding, [x for a, b, _ in listed for x in (a, b)], pairs=listed)]


def _absorption(result: EvalResult, details: Mapping) -> list[LatentGroup]:
    from saehealth.advice import per_letter_absorption

    fractions, main = per_letter_absorption(details), details.get("absorption_main_latents")
    absorbing = details.get("absorption_absorbing_latents")
    if fractions is None or main is None:
        return []
    main = np.asarray(main.cpu() if hasattr(main, "cpu") else main, dtype=np.int64)
    absorbing = (
        np.asarray(absorbing.cpu() if hasattr(absorbing, "cpu") else absorbing, dtype=np.int64)
        if absorbing is not None
        else np.full((26, 0), -1)
    )
    letters = []
    for i in np.argsort(-np.nan_to_num(fractions, nan=-1.0), kind="stable"):
        if not np.isfinite(fractions[i]) or fractions[i] <= 0:
            continue
        letters.append(
            LetterAbsorption(
                string.ascii_uppercase[i],
                float(fractions[i]),
                _ints(main[i][main[i] >= 0]),
                _ints(absorbing[i][absorbing[i] >= 0]),
            )
        )
    if not letters:
        return []
    members = list(dict.fromkeys(x for letter in letters for x in (*letter.main, *letter.absorbing)))
    estimator = result.eval.absorption_estimator("absorption_fraction")
    estimator = f" ({estimator})" if estimator else ""
    finding = (
        f"absorption_fraction {format_value('absorption_fraction', result.metrics.get('absorption_fraction'))}"
        f"{estimator}: "
        f"{len(letters)} letters have absorbed tokens in the word splits that scored them (a letter's fraction is over"
        " the true positives of all those splits); each letter's main latents, then the latents that take over"
    )
    return [LatentGroup("absorption", "Absorbed letters", finding, members, letters=letters)]
