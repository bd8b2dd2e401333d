"""Rules that explain an unhealthy result and say what to change in training.

Each rule reads the metrics, the verdicts and what the checkpoint records about its training
(`result.sae.training`: training_tokens, lr, l1_coefficient, k, normalize_activations, ...) and returns a
`Finding` whose detail cites the numbers that triggered it, in the spirit of the hand-written "Analysis and
Findings" / "Recommendations" of the 003 assessment. When every measured check is healthy and no rule
fires, the advice is a single "Nothing to fix".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from saehealth.metrics.sparsity import dead_rate_bound
from saehealth.result import EvalResult
from saehealth.thresholds import BORDERLINE, HEALTHY, NOT_MEASURED, UNHEALTHY, assess, load_thresholds

SEVERITIES = ("critical", "warning", "info", "ok")

# ~1,000 training tokens per latent: below that the average latent sees too few firing examples to
# learn a direction (003: 500k tokens for 131k latents is ~4 per latent, and 88.8% of them died).
MIN_TOKENS_PER_LATENT = 1_000
# A latent firing less than once per million tokens is as good as dead for interpretability work; used
# when the checkpoint does not record the dead-feature threshold its training used.
DEFAULT_DEAD_RATE = 1e-6
# `expected_average_only_in` scales activations to E‖x‖ = √d_in; half an order of magnitude away from
# that, hyperparameters tuned on normalised activations (l1 coefficient, lr) no longer transfer.
NORM_RATIO_LIMIT = 10**0.5
TOPK_ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk", "abstopk")
L1_ARCHITECTURES = ("standard", "gated")
NOT_OK = (BORDERLINE, UNHEALTHY)


@dataclass
class Finding:
    """One diagnosis: what is wrong (citing the numbers), what to change, and how much it matters."""

    title: str
    detail: str
    recommendation: str
    severity: str  # critical | warning | info | ok
    rule: str = ""


@dataclass
class _Context:
    result: EvalResult
    details: dict
    verdicts: dict

    @property
    def metrics(self) -> dict:
        return self.result.metrics

    @property
    def architecture(self) -> str:
        return str(self.result.sae.architecture or self.training("architecture") or "").lower()

    def training(self, *names: str):
        """The first recorded training setting among `names` (checkpoints spell some differently)."""
        for name in names:
            value = self.result.sae.training.get(name)
            if value is not None:
                return value
        return None

    def status(self, key: str) -> str:
        verdict = self.verdicts.get(key)
        return verdict["status"] if verdict else NOT_MEASURED

    def value(self, key: str):
        verdict = self.verdicts.get(key)
        if verdict is not None and verdict.get("value") is not None:
            return verdict["value"]
        return self.metrics.get(key)

    def array(self, key: str) -> np.ndarray | None:
        value = self.details.get(key)
        if value is None:
            return None
        return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)


def _num(x) -> str:
    """A number for prose: 131,072 / 0.888 / 1.5e-05."""
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2g}"
    return f"{x:.3g}"


def _sentence(text: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case 'TopK')."""
    return text[:1].upper() + text[1:]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _cite(ctx: _Context, key: str) -> str:
    """'loss_recovered 0.072 (unhealthy; healthy ≥ 0.70)'."""
    verdict = ctx.verdicts.get(key, {})
    return f"{key} {_num(ctx.value(key))} ({verdict.get('status', '?')}; healthy {verdict.get('band', '?')})"


# The eval engine saves per-letter absorption as `absorption_<name>` (names: PER_LETTER_FLOATS in absorption/measure.py);
# `absorption_per_letter` is accepted as an alias of the per-letter absorption fraction.
PER_LETTER_ABSORPTION_KEYS = ("absorption_absorption_fraction", "absorption_per_letter")


def per_letter_absorption(details: dict) -> np.ndarray | None:
    """The 26 per-letter absorption fractions from the details (NaN where a letter was not scored), or None."""
    for key in PER_LETTER_ABSORPTION_KEYS:
        value = details.get(key)
        if value is None:
            continue
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)
        if array.shape == (26,):
            return array
    return None


# ------------------------------------------------------------------------------------------------ rules
def _too_few_training_tokens(ctx: _Context) -> Finding | None:
    tokens = ctx.training("training_tokens", "total_training_tokens")
    d_sae = ctx.result.sae.d_sae
    if not tokens or not d_sae:
        return None
    per_latent = tokens / d_sae
    if per_latent >= MIN_TOKENS_PER_LATENT:
        return None
    symptoms = [
        _cite(ctx, key)
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
            f"Trained on {_num(int(tokens))} tokens for {d_sae:,} latents: {_num(per_latent)} tokens per latent, "
            f"below the ~{MIN_TOKENS_PER_LATENT:,} per latent SAEs usually need. Symptoms: {'; '.join(symptoms)}."
        ),
        recommendation=(f"Train on at least {MIN_TOKENS_PER_LATENT * d_sae:,} tokens (`training_tokens`){shrink}."),
        severity="critical" if per_latent < MIN_TOKENS_PER_LATENT / 10 else "warning",
        rule="too_few_training_tokens",
    )


def _many_dead_latents(ctx: _Context) -> Finding | None:
    status = ctx.status("dead_fraction")
    if status not in NOT_OK:
        return None
    dead, fraction = ctx.metrics.get("dead_features"), ctx.value("dead_fraction")
    T = ctx.result.eval.tokens_scored
    count = f"{dead:,} of {ctx.result.sae.d_sae:,} latents ({_pct(fraction)})" if dead is not None else _pct(fraction)
    steps = []
    tokens = ctx.training("training_tokens", "total_training_tokens")
    steps.append(f"train longer (now {_num(int(tokens))} tokens)" if tokens else "train longer")
    lr = ctx.training("lr")
    steps.append(
        f"lower the learning rate (lr {lr:g} → {lr / 2:g})"
        if isinstance(lr, (int, float))
        else "lower the learning rate"
    )
    arch = ctx.architecture
    if arch in TOPK_ARCHITECTURES:
        coef = ctx.training("aux_loss_coefficient")
        steps.append(
            "raise the AuxK auxiliary loss that revives dead latents (`aux_loss_coefficient`"
            + (f", now {coef:g})" if isinstance(coef, (int, float)) else ")")
        )
    else:
        steps.append(
            "switch to TopK or BatchTopK with the AuxK auxiliary loss (`architecture: batchtopk`), "
            "or resample dead latents during training"
        )
    return Finding(
        title="Many dead latents",
        detail=(
            f"{count} never fired in T = {T:,} evaluated tokens (dead_fraction {status}; healthy "
            f"{ctx.verdicts['dead_fraction']['band']}): each fires below 3/T = {_num(3 / T)} with 95% confidence, "
            "so this share of the dictionary is wasted capacity."
        ),
        recommendation=_sentence("; ".join(steps)) + ".",
        severity="critical" if status == UNHEALTHY else "warning",
        rule="many_dead_latents",
    )


def _l0_out_of_band(ctx: _Context) -> Finding | None:
    status = ctx.status("l0")
    if status not in NOT_OK:
        return None
    l0 = ctx.value("l0")
    lo, hi = _healthy_range(ctx, "l0")
    too_dense = hi is not None and l0 > hi
    target = f"{_num(lo) if lo is not None else '0'}–{_num(hi) if hi is not None else '∞'}"
    detail = f"L0 = {_num(l0)} latents per token, {'above' if too_dense else 'below'} the healthy {target} ({status})"
    arch = ctx.architecture
    k = ctx.training("k")
    if arch in TOPK_ARCHITECTURES:
        middle = round(math.sqrt((lo or 1) * (hi or 4 * (lo or 1))))
        now = f" (now k = {k})" if k is not None else ""
        rec = f"L0 is set by k in a {arch} SAE: retrain with k inside {target}, e.g. k = {middle}{now}."
    elif arch == "jumprelu" or ctx.training("l0_coefficient") is not None:
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
        if arch not in L1_ARCHITECTURES and arch:
            rec += f" (Architecture {arch!r}: check which setting controls its sparsity.)"
    return Finding(
        title=f"L0 {'too high' if too_dense else 'too low'}",
        detail=detail
        + ("; latents this dense are hard to interpret." if too_dense else "; so sparse an SAE reconstructs poorly."),
        recommendation=rec,
        severity="warning" if status == UNHEALTHY else "info",
        rule="l0_out_of_band",
    )


def _healthy_range(ctx: _Context, key: str) -> tuple[float | None, float | None]:
    verdict = ctx.verdicts.get(key, {})
    if "healthy_range" in verdict:
        lo, hi = verdict["healthy_range"]
        return lo, hi
    band = load_thresholds().bands[key]
    return band.healthy_min, band.healthy_max


def _loss_vs_variance(ctx: _Context) -> Finding | None:
    loss, ev, dce = ctx.status("loss_recovered"), ctx.status("explained_variance"), ctx.status("delta_ce")
    delta = ctx.value("delta_ce")
    delta_text = f", delta CE {_num(delta)} nats" if delta is not None else ""
    if loss in NOT_OK and ev == HEALTHY:
        l2 = ctx.metrics.get("l2_ratio")
        shrink = f" l2_ratio is {_num(l2)} (below 1 means shrinkage)." if l2 is not None else ""
        return Finding(
            title="Good reconstruction, poor downstream loss",
            detail=(
                f"The SAE explains {_pct(ctx.value('explained_variance'))} of the variance but recovers only "
                f"{_num(ctx.value('loss_recovered'))} of the loss{delta_text}: its error lies in directions the "
                f"model relies on.{shrink}"
            ),
            recommendation=(
                "Check that the hook and activation normalisation at evaluation match training; then fine-tune "
                "with a downstream (KL / end-to-end) loss or raise L0 so small but important directions survive."
            ),
            severity="warning",
            rule="loss_vs_variance",
        )
    if loss == HEALTHY and (ev in NOT_OK or dce in NOT_OK):
        bad = [_cite(ctx, key) for key in ("explained_variance", "delta_ce") if ctx.status(key) in NOT_OK]
        return Finding(
            title="Loss recovered flatters this SAE",
            detail=(
                f"loss_recovered {_num(ctx.value('loss_recovered'))} is healthy but {'; '.join(bad)}. Zero-ablating "
                "this hook is so destructive that loss recovered stays high even for mediocre reconstructions."
            ),
            recommendation=(
                "Judge fidelity by delta_ce and kl_div_score; to improve it, raise L0 a little, widen the dictionary "
                "or train longer."
            ),
            severity="info",
            rule="loss_vs_variance",
        )
    return None


def _activation_rms_lower_bound(ctx: _Context) -> float | None:
    """√(mse·d_in / fvu) = √(mean ‖x − μ‖²), a lower bound on the RMS activation norm (METRICS.md definitions)."""
    mse, d_in = ctx.metrics.get("mse"), ctx.result.sae.d_in
    fvu = ctx.metrics.get("fvu")
    if fvu is None and ctx.metrics.get("explained_variance") is not None:
        fvu = 1 - ctx.metrics["explained_variance"]
    if mse is None or not d_in or not fvu or fvu <= 0:
        return None
    return math.sqrt(mse * d_in / fvu)


def _unnormalised_activations(ctx: _Context) -> Finding | None:
    setting = ctx.training("normalize_activations")
    if setting is None or str(setting).lower() != "none":
        return None
    d_in = ctx.result.sae.d_in
    norm = _activation_rms_lower_bound(ctx)
    target = math.sqrt(d_in) if d_in else None
    rec = (
        "Train with `normalize_activations: expected_average_only_in` (activations scaled to E‖x‖ = √d_in), "
        "then re-tune the sparsity coefficient and lr."
    )
    coef = ctx.training("l1_coefficient")
    settings = f" (l1_coefficient {coef:g})" if isinstance(coef, (int, float)) else ""
    if norm is not None and target:
        ratio = norm / target
        if 1 / NORM_RATIO_LIMIT <= ratio <= NORM_RATIO_LIMIT:
            return None
        return Finding(
            title="Activations not normalised, and far from unit scale",
            detail=(
                f"normalize_activations is 'none' and the activations' centred RMS norm is at least {_num(norm)}, "
                f"{_num(ratio)}× the √d_in = {_num(target)} that normalisation targets: the sparsity penalty"
                f"{settings} and the learning rate act on this raw scale, so values tuned elsewhere do not transfer."
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
            f"normalize_activations is 'none'{settings} and {', '.join(bad)} are outside their healthy bands: "
            "without normalisation the penalty's strength depends on this model's activation scale."
        ),
        recommendation=rec,
        severity="info",
        rule="unnormalised_activations",
    )


def _near_duplicates(ctx: _Context) -> Finding | None:
    share_status, red_status = ctx.status("near_duplicate_fraction"), ctx.status("decoder_redundancy")
    if share_status not in NOT_OK and red_status not in NOT_OK:
        return None
    parts = []
    count = ctx.metrics.get("near_duplicate_latents")
    if count is not None:
        share = ctx.value("near_duplicate_fraction")
        parts.append(
            f"{count:,} latents have a decoder direction with cosine > 0.9 to another latent's"
            + (f" ({_pct(share)})" if share is not None else "")
        )
    if ctx.value("decoder_redundancy") is not None:
        parts.append(f"the mean largest decoder cosine is {_num(ctx.value('decoder_redundancy'))}")
    max_cos = ctx.array("max_decoder_cosine")
    if max_cos is not None and (copies := int((max_cos > 0.99).sum())):
        parts.append(f"{copies:,} are near-exact copies (cosine > 0.99)")
    return Finding(
        title="Many near-duplicate latents",
        detail=_sentence("; ".join(parts))
        + ". Duplicated directions split one feature's activations and waste capacity (this is not absorption).",
        recommendation=(
            "Train longer or with a lower lr so duplicates separate, avoid resampling dead latents into the same "
            "direction, or use a smaller dictionary."
        ),
        severity="warning" if UNHEALTHY in (share_status, red_status) else "info",
        rule="near_duplicates",
    )


def _short_evaluation(ctx: _Context) -> Finding | None:
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
        f"{dead:,} latents never fired in T = {T:,} tokens, which bounds their rate only below 3/T = {_num(bound)}, "
        f"not below {_num(threshold)} ({source}): some may be rare rather than dead."
    )
    counts = ctx.array("firing_counts")
    if counts is not None:
        once, twice = int((counts == 1).sum()), int((counts == 2).sum())
        # Chao1 estimate of classes present but unseen: f1²/(2 f2), bias-corrected when f2 = 0.
        hidden = once**2 / (2 * twice) if twice else once * (once - 1) / 2
        hidden = min(dead, hidden)
        if hidden >= 1:
            detail += (
                f" {once:,} latents fired exactly once and {twice:,} twice; the Chao1 estimate puts about "
                f"{_num(round(hidden))} rare-but-alive latents among the {dead:,} counted dead."
            )
        else:
            detail += (
                f" No latent fired exactly once ({twice:,} twice), so few rare latents are likely hiding among them."
            )
    needed = math.ceil(3 / threshold)
    return Finding(
        title="Evaluation too short to call latents dead",
        detail=detail,
        recommendation=(
            f"Read dead_fraction as an upper bound, or evaluate on more tokens (`--tokens`): "
            f"{needed:,} tokens bring 3/T down to {_num(threshold)}."
        ),
        severity="info",
        rule="short_evaluation",
    )


def _absorption(ctx: _Context) -> Finding | None:
    status = ctx.status("absorption_fraction")
    if status not in NOT_OK:
        return None
    parts = [
        f"mean absorption fraction {_num(ctx.value('absorption_fraction'))} ({status}; healthy {ctx.verdicts['absorption_fraction']['band']})"
    ]
    if (full := ctx.metrics.get("full_absorption_rate")) is not None:
        parts.append(f"full absorption rate {_num(full)}")
    if (letters := ctx.metrics.get("absorption_letters_scored")) is not None:
        parts.append(f"over {int(letters)} letters")
    per_letter = per_letter_absorption(ctx.details)
    if per_letter is not None and np.isfinite(per_letter).any():
        order = [i for i in np.argsort(-np.nan_to_num(per_letter, nan=-1.0)) if np.isfinite(per_letter[i])][:3]
        parts.append("worst letters " + ", ".join(f"{chr(ord('a') + int(i))} {per_letter[i]:.2f}" for i in order))
    return Finding(
        title="High feature absorption",
        detail=_sentence("; ".join(parts))
        + ': general latents ("starts with S") go silent where a more specific latent takes over.',
        recommendation=(
            "Absorption grows with dictionary width and sparsity: try a Matryoshka SAE (`architecture: "
            "matryoshka_batchtopk`), a somewhat higher L0, or a narrower dictionary."
        ),
        severity="warning" if status == UNHEALTHY else "info",
        rule="absorption",
    )


def _dense_latents(ctx: _Context) -> Finding | None:
    status = ctx.status("dense_fraction")
    if status not in NOT_OK:
        return None
    count = ctx.metrics.get("dense_features")
    return Finding(
        title="Many dense latents",
        detail=(
            f"{_num(count) if count is not None else 'Some'} latents fire on more than 10% of tokens "
            f"(dense_fraction {_num(ctx.value('dense_fraction'))}; healthy {ctx.verdicts['dense_fraction']['band']}). "
            "A few dense latents (position, start-of-text) are normal."
        ),
        recommendation=(
            "Look at the densest latents; if many are uninterpretable, strengthen the sparsity penalty or check "
            "that the decoder bias is subtracted from the input (`apply_b_dec_to_input`)."
        ),
        severity="info",
        rule="dense_latents",
    )


RULES: tuple[Callable[[_Context], Finding | None], ...] = (
    _too_few_training_tokens,
    _many_dead_latents,
    _short_evaluation,
    _l0_out_of_band,
    _loss_vs_variance,
    _unnormalised_activations,
    _near_duplicates,
    _absorption,
    _dense_latents,
)


def advise(result: EvalResult, details: dict | None = None) -> list[Finding]:
    """Findings for this result, most severe first; [Nothing to fix] when every measured check is healthy.

    Uses `result.verdicts` (so a custom thresholds file shapes the advice); computes default verdicts when
    the result has none."""
    verdicts = result.verdicts or assess(result.metrics, result.not_measured, d_sae=result.sae.d_sae)
    ctx = _Context(result=result, details=details or {}, verdicts=verdicts)
    findings = [finding for rule in RULES if (finding := rule(ctx)) is not None]
    if not findings:
        findings = [_fallback(ctx)]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def _fallback(ctx: _Context) -> Finding:
    """No rule fired: either all is well, or some band is missed that no rule knows how to explain."""
    measured = {k: v for k, v in ctx.verdicts.items() if v["status"] != NOT_MEASURED}
    off = [_cite(ctx, key) for key, v in measured.items() if v["status"] in NOT_OK]
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
        recommendation="No specific rule explains this; see METRICS.md for what each metric measures.",
        severity="info",
        rule="outside_band",
    )
