"""Verdicts: each banded metric of a result against the thresholds, and the summary of the headline ones.

A metric that was not measured is `not measured` with the reason, never healthy; `near_duplicate_fraction`
is derived here from `near_duplicate_latents` and d_sae so it can be banded like any other metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from saehealth.thresholds import (
    BAND_ESTIMATORS,
    BORDERLINE,
    HEADLINE_METRICS,
    HEALTHY,
    NOT_MEASURED,
    UNHEALTHY,
    Thresholds,
    load_thresholds,
)

if TYPE_CHECKING:
    from saehealth.result import EvalResult


def derived_metrics(metrics: Mapping, d_sae: int | None = None) -> dict[str, float | None]:
    """Metrics computed from others: the near-duplicate share needs the dictionary size."""
    count = metrics.get("near_duplicate_latents")
    if count is None:
        return {"near_duplicate_fraction": None}
    if count == 0:
        return {"near_duplicate_fraction": 0.0}
    d_sae = d_sae or _infer_d_sae(metrics)
    return {"near_duplicate_fraction": count / d_sae if d_sae else None}


def _infer_d_sae(metrics: Mapping) -> int | None:
    """d_sae from a count and its fraction (dead or dense latents), when one of them is non-zero."""
    for count_key, fraction_key in (("dead_features", "dead_fraction"), ("dense_features", "dense_fraction")):
        count, fraction = metrics.get(count_key), metrics.get(fraction_key)
        if count and fraction:
            return round(count / fraction)
    return None


def assess(
    metrics: Mapping,
    not_measured: Mapping | None = None,
    thresholds: Thresholds | str | Path | None = None,
    *,
    d_sae: int | None = None,
    absorption_schedule: str | None = None,
) -> dict[str, dict]:
    """Verdict per banded metric: value, healthy band text, status, whether it is a headline metric, and why
    it was not measured. Headline metrics come first, then secondary checks, in the preset's order.

    An absorption verdict names the probe schedule its band was set for (`estimator`); `absorption_schedule`
    (the result's `eval.absorption_probes`) picks the band of the schedule `absorption_fraction` was measured
    under, when the thresholds have one for it."""
    thresholds = load_thresholds(thresholds)  # also accepts a preset name or file path
    not_measured = not_measured or {}
    values = {**metrics, **derived_metrics(metrics, d_sae)}
    verdicts: dict[str, dict] = {}
    for key in [*thresholds.headline(), *thresholds.secondary()]:
        band_key = _band_key(key, absorption_schedule, thresholds)
        band = thresholds.bands[band_key]
        value = values.get(key)
        measured = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        reason = None
        if not measured:
            reason = not_measured.get(key) or _derived_reason(key, metrics, not_measured) or "not in the result"
        verdicts[key] = {
            "value": value if measured else None,
            "band": band.healthy_text(),
            "borderline": band.borderline_text(),
            "status": band.status(float(value)) if measured else NOT_MEASURED,
            "headline": key in HEADLINE_METRICS,
            "reason": reason,
            # Numeric bounds (None = unbounded) so advice and plots need not parse the text.
            "healthy_range": [band.healthy_min, band.healthy_max],
            "borderline_range": [band.borderline_min, band.borderline_max],
            # The probe schedule the band was set for (absorption only; None elsewhere).
            "estimator": BAND_ESTIMATORS.get(band_key),
        }
    return verdicts


def _band_key(key: str, absorption_schedule: str | None, thresholds: Thresholds) -> str:
    """The band that judges `key`: for the headline absorption, the band set for the schedule it was measured
    under (e.g. absorption_fraction_saebench's for saebench-0.6) when there is one."""
    if key != "absorption_fraction" or absorption_schedule in (None, BAND_ESTIMATORS[key]):
        return key
    for band_key, schedule in BAND_ESTIMATORS.items():
        if schedule == absorption_schedule and band_key in thresholds.bands:
            return band_key
    return key


def _derived_reason(key: str, metrics: Mapping, not_measured: Mapping) -> str | None:
    if key == "near_duplicate_fraction":
        if metrics.get("near_duplicate_latents") is None:
            return not_measured.get("near_duplicate_latents")
        return "d_sae unknown, so the share of near-duplicate latents cannot be computed"
    return None


def headline_summary(verdicts: Mapping[str, dict]) -> str:
    """'3/4 metrics healthy' over the headline metrics; not measured never counts as healthy."""
    headline = [v for v in verdicts.values() if v.get("headline")]
    healthy = sum(v["status"] == HEALTHY for v in headline)
    return f"{healthy}/{len(headline)} metrics healthy"


def is_unhealthy(verdicts: Mapping[str, dict]) -> bool:
    """True when any headline metric is unhealthy (what --strict turns into exit code 2)."""
    return any(v.get("headline") and v["status"] == UNHEALTHY for v in verdicts.values())


def result_verdicts(result: EvalResult, thresholds: Thresholds | str | Path | None = None) -> dict[str, dict]:
    """`assess` of a result's metrics under the thresholds (a preset name or file; None: the default), and a
    routed SAE's routing checks (unused layers, collapse)."""
    verdicts = assess(
        result.metrics,
        result.not_measured,
        thresholds,
        d_sae=result.sae.d_sae,
        absorption_schedule=result.eval.absorption_probes,
    )
    if result.routing is not None:
        verdicts.update(routing_verdicts(result.routing))
    return verdicts


def verdicts_of(result: EvalResult) -> dict[str, dict]:
    """The result's verdicts, or default-preset ones when it has none."""
    return result.verdicts or result_verdicts(result)


def _routing_verdict(value: float, status: str, band: str, borderline: str, healthy_range, borderline_range) -> dict:
    return {
        "value": float(value),
        "band": band,
        "borderline": borderline,
        "status": status,
        "headline": False,
        "reason": None,
        "healthy_range": list(healthy_range),
        "borderline_range": list(borderline_range),
    }


def routing_verdicts(routing: dict) -> dict[str, dict]:
    """The routing checks of a routed SAE's `routing` section (saehealth/routed/checks.py): unused layers and
    collapse onto one layer."""
    from saehealth.routed.checks import COLLAPSE_HEALTHY, COLLAPSE_SHARE

    n_layers = len(routing.get("layers", [])) or 1
    unused = len(routing.get("unused_layers", []))
    unused_status = HEALTHY if unused == 0 else BORDERLINE if unused < n_layers / 2 else UNHEALTHY
    top = routing.get("max_route_share") or 0.0
    top_status = HEALTHY if top <= COLLAPSE_HEALTHY else BORDERLINE if top <= COLLAPSE_SHARE else UNHEALTHY
    return {
        "routing_unused_layers": _routing_verdict(
            unused, unused_status, "0 layers under 0.1% of tokens", "some, but fewer than half of the layers",
            (0, 0), (1, max(1.0, n_layers / 2 - 0.5)),
        ),
        "routing_collapse": _routing_verdict(
            top, top_status, f"largest route share ≤ {COLLAPSE_HEALTHY}", f"≤ {COLLAPSE_SHARE}",
            (None, COLLAPSE_HEALTHY), (COLLAPSE_HEALTHY, COLLAPSE_SHARE),
        ),
    }  # fmt: skip
