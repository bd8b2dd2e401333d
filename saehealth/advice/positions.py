"""The by-position finding: the first positions or the tail of the context much worse than the rest.

From result.json's `diagnostics.by_position` (metrics/positions.py): per log-spaced bucket, FVU = 1 − explained
variance and ΔCE. The first positions are the buckets of positions 1–3, the tail the last bucket; "the rest" is the
token-weighted mean over the other buckets. A part is much worse when its FVU is at least WORSE_RATIO times the
rest's (and above MIN_FVU), or its ΔCE at least WORSE_RATIO times the rest's (and above MIN_DELTA_CE nats).
"""

from __future__ import annotations

from saehealth.advice.context import AdviceContext, Finding, num

WORSE_RATIO = 2.0
MIN_FVU = 0.05
MIN_DELTA_CE = 0.02
FIRST_BUCKETS = 2  # positions 1 and 2–3


def _weighted(values: list, weights: list, indices) -> float | None:
    pairs = [(values[i], weights[i]) for i in indices if values[i] is not None and weights[i]]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _worse(data: dict, part: list[int], rest: list[int]) -> list[str]:
    """What is much worse in `part` than in `rest`, as phrases citing both numbers."""
    found = []
    fvu = [None if v is None else 1 - v for v in data["explained_variance"]]
    mine, theirs = _weighted(fvu, data["tokens"], part), _weighted(fvu, data["tokens"], rest)
    if mine is not None and theirs is not None and mine >= MIN_FVU and mine >= WORSE_RATIO * max(theirs, 1e-12):
        found.append(f"FVU {num(mine)} against {num(theirs)}")
    if "delta_ce" in data:
        weights = data.get("predicting", data["tokens"])
        mine, theirs = _weighted(data["delta_ce"], weights, part), _weighted(data["delta_ce"], weights, rest)
        if mine is not None and theirs is not None and mine >= MIN_DELTA_CE and mine >= WORSE_RATIO * max(theirs, 0):
            found.append(f"Δ CE {num(mine)} nats against {num(theirs)}")
    return found


def position_extremes(ctx: AdviceContext) -> Finding | None:
    data = (ctx.result.diagnostics or {}).get("by_position")
    if not data:
        return None
    filled = [i for i, t in enumerate(data["tokens"]) if t]
    if len(filled) < FIRST_BUCKETS + 2:
        return None
    first = [i for i in filled if i < FIRST_BUCKETS]
    tail = [filled[-1]]
    middle = [i for i in filled if i not in first and i not in tail]
    parts = []
    if first and (worse := _worse(data, first, middle)):
        parts.append(f"at the first positions (1–{data['last_position'][first[-1]]}): {'; '.join(worse)}")
    if worse := _worse(data, tail, middle):
        parts.append(f"at the tail (positions {data['buckets'][tail[0]]}): {'; '.join(worse)}")
    if not parts:
        return None
    trained = data.get("training_context")
    beyond = trained is not None and data["last_position"][tail[0]] > trained
    note = f" The evaluation runs past the SAE's training context ({trained})." if beyond else ""
    return Finding(
        title="Reconstruction depends on the position",
        detail=f"Compared with the other positions, the SAE is much worse {' and '.join(parts)}.{note}",
        recommendation=(
            "See the by-position plot. Worse first positions: check that BOS/attention-sink positions are handled "
            "as in training (masked, or trained on); a worse tail: train on contexts as long as you evaluate, "
            "or evaluate at the training context length."
        ),
        severity="warning",
        rule="position_extremes",
    )
