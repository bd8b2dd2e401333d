"""The rules in the order they are tried, and `advise`: findings most severe first, or "Nothing to fix"."""

from __future__ import annotations

from collections.abc import Callable

from saehealth.advice.context import NOT_OK, AdviceContext, Finding, cite
from saehealth.advice.positions import position_extremes
from saehealth.advice.quality import absorption, dense_latents, loss_vs_variance, near_duplicates
from saehealth.advice.training import (
    l0_out_of_band,
    many_dead_latents,
    short_evaluation,
    too_few_training_tokens,
    unnormalised_activations,
)
from saehealth.result import EvalResult
from saehealth.thresholds import NOT_MEASURED
from saehealth.verdicts import verdicts_of

SEVERITIES = ("critical", "warning", "info", "ok")

RULES: tuple[Callable[[AdviceContext], Finding | None], ...] = (
    too_few_training_tokens,
    many_dead_latents,
    short_evaluation,
    l0_out_of_band,
    loss_vs_variance,
    unnormalised_activations,
    near_duplicates,
    absorption,
    dense_latents,
    position_extremes,
)


def advise(result: EvalResult, details: dict | None = None) -> list[Finding]:
    """Findings for this result, most severe first; [Nothing to fix] when every measured check is healthy.

    Uses `result.verdicts` (so a custom thresholds file shapes the advice); computes default verdicts when
    the result has none."""
    ctx = AdviceContext(result=result, details=details or {}, verdicts=verdicts_of(result))
    findings = [finding for rule in RULES if (finding := rule(ctx)) is not None]
    if not findings:
        findings = [_fallback(ctx)]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def _fallback(ctx: AdviceContext) -> Finding:
    """No rule fired: either all is well, or some band is missed that no rule knows how to explain."""
    measured = {k: v for k, v in ctx.verdicts.items() if v["status"] != NOT_MEASURED}
    off = [cite(ctx, key) for key, v in measured.items() if v["status"] in NOT_OK]
    missing = [
        f"{key} ({v['reason']})" for key, v in ctx.verdicts.items() if v["status"] == NOT_MEASURED and v["headline"]
    ]
    caveat = f" Not measured: {'; '.join(missing)}." if missing else ""
    if not off:
        return Finding(
            title="Nothing to fix",
            detail=f"All {len(measured)} measured checks are inside their healthy bands.{caveat}",
            recommendation="",
            severity="ok",
            rule="nothing_to_fix",
        )
    return Finding(
        title="Outside the healthy band",
        detail=f"{'; '.join(off)}.{caveat}",
        recommendation="No specific rule explains this; see the metric definitions for what each metric measures.",
        severity="info",
        rule="outside_band",
    )
