"""Rules about how the SAE was trained: too few tokens, dead latents (and an evaluation too short to call
them dead), L0 outside its band, unnormalised activations."""

from __future__ import annotations

import math

import saehealth.advice.knobs as knobs
from saehealth.advice.context import NOT_OK, AdviceContext, Finding, cite, num, pct, sentence
from saehealth.metrics.sparsity import dead_rate_bound
from saehealth.thresholds import UNHEALTHY

# ~1,000 training tokens per latent: below that the average latent sees too few firing examples to
# learn a direction (003: 500k tokens for 131k latents is ~4 per latent, and 88.8% of them died).
MIN_TOKENS_PER_LATENT = 1_000
# A latent firing less than once per million tokens is as good as dead for interpretability work; used
# when the checkpoint does not record the dead-feature threshold its training used.
DEFAULT_DEAD_RATE = 1e-6
# `expected_average_only_in` scales activations to E‖x‖ = √d_in; half an order of magnitude away from
# that, hyperparameters tuned on normalised activations (sparsity coefficients, lr) no longer transfer.
NORM_RATIO_LIMIT = 10**0.5


def too_few_training_tokens(ctx: AdviceContext) -> Finding | None:
    tokens = ctx.training("training_tokens", "total_training_tokens")
    d_sae = ctx.result.sae.d_sae
    if not tokens or not d_sae:
        return None
    per_latent = tokens / d_sae
    if per_latent >= MIN_TOKENS_PER_LATENT:
        return None
    symptoms = [
        cite(ctx, key)
        for key in ("loss_recovered", "dead_fraction", "l0", "explained_variance")
        if ctx.status(key) in NOT_OK
    ]
    if not symptoms:  # trained briefly but healthy anyway: nothing to fix
        return None
    affordable = int(tokens // MIN_TOKENS_PER_LATENT)
    d_in = ctx.result.sae.d_in
    shrink = (
        f", or shrink the dictionary to about {affordable:,} latents (expansion factor {affordable / d_in:.2g})"
        if d_in and affordable >= d_in
        else ""
    )
    return Finding(
        title="Too few training tokens per latent",
        detail=(
            f"Trained on {num(int(tokens))} tokens for {d_sae:,} latents: {num(per_latent)} tokens per latent, "
            f"below the ~{MIN_TOKENS_PER_LATENT:,} per latent SAEs usually need. Symptoms: {'; '.join(symptoms)}."
        ),
        recommendation=f"Train on at least {MIN_TOKENS_PER_LATENT * d_sae:,} tokens (`training_tokens`){shrink}.",
        severity="critical" if per_latent < MIN_TOKENS_PER_LATENT / 10 else "warning",
        rule="too_few_training_tokens",
    )


def many_dead_latents(ctx: AdviceContext) -> Finding | None:
    status = ctx.status("dead_fraction")
    if status not in NOT_OK:
        return None
    dead, fraction = ctx.metrics.get("dead_features"), ctx.value("dead_fraction")
    T = ctx.result.eval.tokens_scored
    count = f"{dead:,} of {ctx.result.sae.d_sae:,} latents ({pct(fraction)})" if dead is not None else pct(fraction)
    tokens = ctx.training("training_tokens", "total_training_tokens")
    steps = [f"train longer (now {num(int(tokens))} tokens)" if tokens else "train longer"]
    lr = ctx.training("lr")
    steps.append(
        f"lower the learning rate (lr {lr:g} → {lr / 2:g})"
        if isinstance(lr, (int, float))
        else "lower the learning rate"
    )
    steps += knobs.revive_dead(ctx)
    return Finding(
        title="Many dead latents",
        detail=(
            f"{count} never fired in T = {T:,} evaluated tokens (dead_fraction {status}; healthy "
            f"{ctx.verdicts['dead_fraction']['band']}): each fires below 3/T = {num(3 / T)} with 95% confidence, "
            "so this share of the dictionary is wasted capacity."
        ),
        recommendation=sentence("; ".join(steps)) + ".",
        severity="critical" if status == UNHEALTHY else "warning",
        rule="many_dead_latents",
    )


def short_evaluation(ctx: AdviceContext) -> Finding | None:
    dead = ctx.metrics.get("dead_features")
    if not dead or ctx.status("dead_fraction") not in NOT_OK:
        return None
    T = ctx.result.eval.tokens_scored
    recorded = ctx.training("dead_feature_threshold")
    threshold = float(recorded) if isinstance(recorded, (int, float)) and recorded > 0 else DEFAULT_DEAD_RATE
    source = (
        "the dead-feature threshold its training used" if threshold == recorded else "the usual dead-latent threshold"
    )
    bound = dead_rate_bound(T)
    if bound <= threshold:
        return None
    detail = (
        f"{dead:,} latents never fired in T = {T:,} tokens, which bounds their rate only below 3/T = {num(bound)}, "
        f"not below {num(threshold)} ({source}): some may be rare rather than dead."
    )
    counts = ctx.array("firing_counts")
    if counts is not None:
        once, twice = int((counts == 1).sum()), int((counts == 2).sum())
        # Chao1 estimate of classes present but unseen: f1²/(2 f2), bias-corrected when f2 = 0.
        hidden = min(dead, once**2 / (2 * twice) if twice else once * (once - 1) / 2)
        if hidden >= 1:
            detail += (
                f" {once:,} latents fired exactly once and {twice:,} twice; the Chao1 estimate puts about "
                f"{num(round(hidden))} rare-but-alive latents among the {dead:,} counted dead."
            )
        else:
            detail += (
                f" No latent fired exactly once ({twice:,} twice), so few rare latents are likely hiding among them."
            )
    return Finding(
        title="Evaluation too short to call latents dead",
        detail=detail,
        recommendation=(
            f"Read dead_fraction as an upper bound, or evaluate on more tokens (`--tokens`): "
            f"{math.ceil(3 / threshold):,} tokens bring 3/T down to {num(threshold)}."
        ),
        severity="info",
        rule="short_evaluation",
    )


def l0_out_of_band(ctx: AdviceContext) -> Finding | None:
    status = ctx.status("l0")
    if status not in NOT_OK:
        return None
    l0 = ctx.value("l0")
    lo, hi = ctx.healthy_range("l0")
    too_dense = hi is not None and l0 > hi
    target = f"{num(lo) if lo is not None else '0'}–{num(hi) if hi is not None else '∞'}"
    detail = f"L0 = {num(l0)} latents per token, {'above' if too_dense else 'below'} the healthy {target} ({status})"
    kind = knobs.family(ctx.architecture)
    if kind == knobs.TOPK:
        middle = round(math.sqrt((lo or 1) * (hi or 4 * (lo or 1))))
        k = ctx.training("k")
        now = f" (now k = {k})" if k is not None else ""
        average = (
            " (on average: BatchTopK learns a threshold that keeps k per token)"
            if "batchtopk" in ctx.architecture
            else ""
        )
        rec = f"L0 is set by k in a {knobs.name(ctx)} SAE{average}: retrain with k inside {target}, e.g. k = {middle}{now}."
    elif kind == knobs.JUMPRELU or ctx.training("l0_coefficient") is not None:
        coef = ctx.training("l0_coefficient")
        now = f" from {coef:g}" if isinstance(coef, (int, float)) else ""
        rec = (
            f"{'Raise' if too_dense else 'Lower'} the sparsity penalty `l0_coefficient`{now} "
            f"(a larger penalty gives a smaller L0), and sweep it in factors of 2."
        )
    else:
        coef = ctx.training("l1_coefficient")
        if isinstance(coef, (int, float)):
            new = coef * 2 if too_dense else coef / 2
            rec = (
                f"{'Raise' if too_dense else 'Lower'} `l1_coefficient` from {coef:g} (e.g. to {new:g}): a larger "
                f"L1 penalty gives a smaller L0. Sweep it in factors of 2 and pick the run inside {target}."
            )
        else:
            rec = f"{'Strengthen' if too_dense else 'Weaken'} the sparsity penalty (`l1_coefficient`): a larger penalty gives a smaller L0."
        if kind == knobs.UNKNOWN and ctx.architecture:
            rec += f" (Architecture {ctx.architecture!r}: check which setting controls its sparsity.)"
    return Finding(
        title=f"L0 {'too high' if too_dense else 'too low'}",
        detail=detail
        + ("; latents this dense are hard to interpret." if too_dense else "; so sparse an SAE reconstructs poorly."),
        recommendation=rec,
        severity="warning" if status == UNHEALTHY else "info",
        rule="l0_out_of_band",
    )


def _activation_rms_lower_bound(ctx: AdviceContext) -> float | None:
    """√(mse·d_in / fvu) = √(mean ‖x − μ‖²), a lower bound on the RMS activation norm (METRICS.md definitions)."""
    mse, d_in = ctx.metrics.get("mse"), ctx.result.sae.d_in
    fvu = ctx.metrics.get("fvu")
    if fvu is None and ctx.metrics.get("explained_variance") is not None:
        fvu = 1 - ctx.metrics["explained_variance"]
    if mse is None or not d_in or not fvu or fvu <= 0:
        return None
    return math.sqrt(mse * d_in / fvu)


def unnormalised_activations(ctx: AdviceContext) -> Finding | None:
    setting = ctx.training("normalize_activations")
    if setting is None or str(setting).lower() != "none":
        return None
    d_in = ctx.result.sae.d_in
    norm = _activation_rms_lower_bound(ctx)
    target = math.sqrt(d_in) if d_in else None
    rec = (
        "Train with `normalize_activations: expected_average_only_in` (activations scaled to E‖x‖ = √d_in), "
        f"{knobs.retune_after_normalising(ctx)}."
    )
    if norm is not None and target:
        ratio = norm / target
        if 1 / NORM_RATIO_LIMIT <= ratio <= NORM_RATIO_LIMIT:
            return None
        return Finding(
            title="Activations not normalised, and far from unit scale",
            detail=(
                f"normalize_activations is 'none' and the activations' centred RMS norm is at least {num(norm)}, "
                f"{num(ratio)}× the √d_in = {num(target)} that normalisation targets: {knobs.scale_sensitive(ctx)} "
                "act on this raw scale, so values tuned elsewhere do not transfer."
            ),
            recommendation=rec,
            severity="warning",
            rule="unnormalised_activations",
        )
    # No norm to judge by: only worth saying when something is already wrong.
    bad = [key for key in ("loss_recovered", "l0", "dead_fraction") if ctx.status(key) in NOT_OK]
    if not bad:
        return None
    return Finding(
        title="Activations not normalised",
        detail=(
            f"normalize_activations is 'none' and {', '.join(bad)} are outside their healthy bands: without "
            f"normalisation, {knobs.scale_sensitive(ctx)} depend on this model's activation scale."
        ),
        recommendation=rec,
        severity="info",
        rule="unnormalised_activations",
    )
