"""Rules about what the trained dictionary does: reconstruction against downstream loss, near-duplicate
and dense latents, feature absorption. Each points at the latents to look at where the report has them."""

from __future__ import annotations

import numpy as np

import saehealth.advice.knobs as knobs
from saehealth.advice.context import NOT_OK, AdviceContext, Finding, cite, num, pct, per_letter_absorption, sentence
from saehealth.thresholds import HEALTHY, UNHEALTHY


def loss_vs_variance(ctx: AdviceContext) -> Finding | None:
    loss, ev, dce = ctx.status("loss_recovered"), ctx.status("explained_variance"), ctx.status("delta_ce")
    delta = ctx.value("delta_ce")
    delta_text = f", delta CE {num(delta)} nats" if delta is not None else ""
    if loss in NOT_OK and ev == HEALTHY:
        l2 = ctx.metrics.get("l2_ratio")
        shrink = f" l2_ratio is {num(l2)} (below 1 means shrinkage)." if l2 is not None else ""
        return Finding(
            title="Good reconstruction, poor downstream loss",
            detail=(
                f"The SAE explains {pct(ctx.value('explained_variance'))} of the variance but recovers only "
                f"{num(ctx.value('loss_recovered'))} of the loss{delta_text}: its error lies in directions the "
                f"model relies on.{shrink}"
            ),
            recommendation=(
                "Check that the hook and activation normalisation at evaluation match training; then fine-tune "
                f"with a downstream (KL / end-to-end) loss, or {knobs.more_active(ctx)} so small but important "
                "directions survive."
            ),
            severity="warning",
            rule="loss_vs_variance",
        )
    if loss == HEALTHY and (ev in NOT_OK or dce in NOT_OK):
        bad = [cite(ctx, key) for key in ("explained_variance", "delta_ce") if ctx.status(key) in NOT_OK]
        return Finding(
            title="Loss recovered flatters this SAE",
            detail=(
                f"loss_recovered {num(ctx.value('loss_recovered'))} is healthy but {'; '.join(bad)}. Zero-ablating "
                "this hook is so destructive that loss recovered stays high even for mediocre reconstructions."
            ),
            recommendation=(
                f"Judge fidelity by delta_ce and kl_div_score; to improve it, {knobs.more_active(ctx)} a little, "
                "widen the dictionary or train longer."
            ),
            severity="info",
            rule="loss_vs_variance",
        )
    return None


def near_duplicates(ctx: AdviceContext) -> Finding | None:
    share_status, red_status = ctx.status("near_duplicate_fraction"), ctx.status("decoder_redundancy")
    if share_status not in NOT_OK and red_status not in NOT_OK:
        return None
    parts = []
    count = ctx.metrics.get("near_duplicate_latents")
    if count is not None:
        share = ctx.value("near_duplicate_fraction")
        parts.append(
            f"{count:,} latents have a decoder direction with cosine > 0.9 to another latent's"
            + (f" ({pct(share)})" if share is not None else "")
        )
    if ctx.value("decoder_redundancy") is not None:
        parts.append(f"the mean largest decoder cosine is {num(ctx.value('decoder_redundancy'))}")
    max_cos, nearest = ctx.array("max_decoder_cosine"), ctx.array("nearest_decoder_latent")
    if max_cos is not None and (copies := int((max_cos > 0.99).sum())):
        parts.append(f"{copies:,} are near-exact copies (cosine > 0.99)")
    if max_cos is not None and nearest is not None and max_cos.size:
        i = int(np.argmax(max_cos))
        parts.append(f"the closest pair is latents {i} and {int(nearest[i])} (cosine {max_cos[i]:.3f})")
    resampling = (
        ", avoid resampling dead latents into the same direction" if knobs.family(ctx.architecture) == knobs.L1 else ""
    )
    return Finding(
        title="Many near-duplicate latents",
        detail=sentence("; ".join(parts))
        + ". Duplicated directions split one feature's activations and waste capacity (this is not absorption).",
        recommendation=(
            "Compare the pairs' contexts (report.html, 'Near-duplicate latents'). Train longer or with a lower lr "
            f"so duplicates separate{resampling}, or use a smaller dictionary."
        ),
        severity="warning" if UNHEALTHY in (share_status, red_status) else "info",
        rule="near_duplicates",
    )


def absorption(ctx: AdviceContext) -> Finding | None:
    # The headline estimator first; SAEBench's (saebench-0.6 schedule) when only it is outside its band.
    key = next((k for k in ("absorption_fraction", "absorption_fraction_saebench") if ctx.status(k) in NOT_OK), None)
    if key is None:
        return None
    status = ctx.status(key)
    band = ctx.verdicts[key]["band"]
    estimator = ctx.result.eval.absorption_estimator(key)
    measured = f", {estimator}" if estimator else ""
    parts = [f"mean absorption fraction {num(ctx.value(key))} ({status}{measured}; healthy {band})"]
    if (full := ctx.metrics.get("full_absorption_rate")) is not None:
        parts.append(f"full absorption rate {num(full)}")
    if (letters := ctx.metrics.get("absorption_letters_scored")) is not None:
        parts.append(f"over {int(letters)} letters")
    per_letter = per_letter_absorption(ctx.details)
    if per_letter is not None and np.isfinite(per_letter).any():
        order = [i for i in np.argsort(-np.nan_to_num(per_letter, nan=-1.0)) if np.isfinite(per_letter[i])][:3]
        parts.append("worst letters " + ", ".join(f"{chr(ord('a') + int(i))} {per_letter[i]:.2f}" for i in order))
    if ctx.architecture == "matryoshka_batchtopk":
        change = (
            "This is already a Matryoshka SAE: give it more and smaller nested widths (`matryoshka_widths`) so "
            f"general latents are learned in the small dictionaries first, {knobs.more_active(ctx)} a little, "
            "or narrow the dictionary."
        )
    else:
        change = (
            "Absorption grows with dictionary width and sparsity: try a Matryoshka SAE (`architecture: "
            f"matryoshka_batchtopk`), {knobs.more_active(ctx)} a little, or a narrower dictionary."
        )
    return Finding(
        title="High feature absorption",
        detail=sentence("; ".join(parts))
        + ': general latents ("starts with S") go silent where a more specific latent takes over.',
        recommendation=change + " Each letter's main and absorbing latents are in report.html ('Absorbed letters').",
        severity="warning" if status == UNHEALTHY else "info",
        rule="absorption",
    )


def dense_latents(ctx: AdviceContext) -> Finding | None:
    key = "dense_unexplained_fraction"
    if ctx.status(key) not in NOT_OK:
        return None
    count = ctx.metrics.get("dense_unexplained")
    kinds = ((ctx.result.diagnostics or {}).get("dense_kinds") or {}).get("counts", {})
    explained = [f"{n} {kind.replace('_', ' ')}" for kind, n in kinds.items() if n and kind != "unexplained"]
    besides = f" Besides them, explained dense latents: {', '.join(explained)}." if explained else ""
    return Finding(
        title="Many dense latents",
        detail=(
            f"{num(count) if count is not None else 'Some'} latents fire on more than 10% of tokens and are not "
            f"position-tracking, antipodal pairs or first-token latents ({key} {num(ctx.value(key))}; healthy "
            f"{ctx.verdicts[key]['band']}).{besides}"
        ),
        recommendation=(
            "Look at the densest latents first (report.html 'Dense latents', or `saehealth latents <folder> --group "
            f"dense`); if many are uninterpretable: {knobs.tame_dense(ctx)}; and check that the decoder bias is "
            "subtracted from the input (`apply_b_dec_to_input`)."
        ),
        severity="info",
        rule="dense_latents",
    )
