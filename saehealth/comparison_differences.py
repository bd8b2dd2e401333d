"""Differences between the SAEs of a comparison, with their paired standard errors (docs/diagnostics.md).

Every SAE is set against a reference (the first, or `--reference NAME`): for each ratio metric the difference
(this SAE − the reference) and its standard error, from the per-sequence totals of both SAEs on the same
sequences (`quantities.paired_totals`, the delta method in `metrics.clusters.SequenceTotals.difference`). A
difference of at most NOISE_SE standard errors is flagged "within noise": the evaluation cannot tell the two
apart on that metric. Results reused from an earlier run were not scored beside the others: their differences
have no paired standard error (null, with the reason). A routed SAE's loss recovered and KL score are against the
routed zero ablation (each token zeroed at its own routed layer), whose baseline depends on its routes: their
differences with any other SAE are null, with the reason (`NOT_COMPARABLE`); ΔCE and KL stay comparable.
"""

from __future__ import annotations

import math

from saehealth.errors import ConfigError
from saehealth.metrics.clusters import SequenceTotals
from saehealth.quantities import RATIO_METRICS

# The ratio metrics compared, in the comparison table's order.
DIFFERENCE_KEYS = ("loss_recovered", "explained_variance", "kl_div_score", "delta_ce", "l0", "next_token_agreement")
NOISE_SE = 2.0
UNPAIRED = "not scored in this pass (a reused result): no paired standard error; pass --force to re-run"
# Metrics whose baseline is the zero ablation, which for a routed SAE is its own routed one.
ZERO_BASELINE_KEYS = ("loss_recovered", "kl_div_score")
NOT_COMPARABLE = (
    "not comparable: a routed SAE's baseline is its routed zero ablation (each token zeroed at its own routed "
    "layer), not the zero ablation of one hook; compare delta_ce and KL instead"
)


def _side(member: int, metric: str) -> tuple[dict, dict]:
    numerator, denominator = RATIO_METRICS[metric]
    return (
        {f"{member}/{k}": v for k, v in numerator.items()},
        {f"{member}/{k}": v for k, v in denominator.items()},
    )


def reference_index(names: list[str], reference: str | None) -> int:
    """The position of the reference SAE: `reference` by name, else the first; ConfigError for an unknown name."""
    if reference is None:
        return 0
    if reference not in names:
        raise ConfigError(f"--reference {reference!r} is none of the compared SAEs ({', '.join(names)}): pick one.")
    return names.index(reference)


def paired_differences(
    names: list[str],
    metrics: list[dict],
    members: list[int | None],
    paired: SequenceTotals | None,
    reference: int = 0,
    routed: list[bool] | None = None,
) -> dict:
    """The differences of every SAE against `names[reference]`.

    `metrics`: each SAE's metric values; `members`: each SAE's index among the paired totals (None when it was
    not scored in this pass); `routed`: which SAEs are routed (their zero-ablation baselines are their own).
    Returns {"reference", "noise_se", "keys", "rows": [{"name", <key>: {"difference", "se", "within_noise"}
    (and "reason" when not comparable)}], "not_paired": reason or None} with a row for every SAE but the reference.
    """
    rows = []
    base = members[reference]
    routed = routed or [False] * len(names)
    for i, name in enumerate(names):
        if i == reference:
            continue
        row: dict = {"name": name}
        for key in DIFFERENCE_KEYS:
            if key in ZERO_BASELINE_KEYS and (routed[i] or routed[reference]):
                row[key] = {"difference": None, "se": None, "within_noise": None, "reason": NOT_COMPARABLE}
                continue
            a, b = metrics[reference].get(key), metrics[i].get(key)
            difference = None if a is None or b is None else b - a
            se = None
            if difference is not None and paired is not None and base is not None and members[i] is not None:
                value = paired.difference(_side(base, key), _side(members[i], key))[1]
                se = value if math.isfinite(value) else None
            within = None if difference is None or se is None else abs(difference) <= NOISE_SE * se
            row[key] = {"difference": difference, "se": se, "within_noise": within}
        rows.append(row)
    unpaired = paired is None or base is None or any(m is None for m in members)
    return {
        "reference": names[reference],
        "noise_se": NOISE_SE,
        "keys": list(DIFFERENCE_KEYS),
        "rows": rows,
        "not_paired": UNPAIRED if unpaired else None,
    }
