"""First-letter feature absorption, measured the way SAEBench 0.6 measures it.

Chanin et al. 2024, "A is for Absorption": a latent that should fire on every word starting with S
stays silent on " short" because a token-specific latent has absorbed the direction. The metric:

1. Model level (cached on disk per model, hook and seed): the tokenizer's alphabetic tokens, split
   80/20; the hook's activation at the word token of SAEBench's first-letter prompt with in-context
   examples; a one-vs-rest logistic-regression probe per letter (scikit-learn, L2, balanced classes as
   SAEBench's `pos_weight`); the probe's held-out F1. Letters with F1 <= 0.6 are skipped; fewer than
   `min_letters` usable letters means the metric is not measured.
2. SAE level: an L1 probe on the latents ranks them per letter; k-sparse probes on the top k latents
   grow k while held-out F1 improves by more than 0.03: the last k's latents are the letter's main
   latents (`mean_num_split_features` is their mean count).
3. On the probe's true positives (held-out words of the letter the probe detects, prompted afresh
   with examples from the whole vocabulary, as SAEBench does), SAEBench's
   absorption fraction: the share of the probe-direction projection carried by up to 3 other latents
   aligned with the probe (cos >= 0.1) rather than by the main latents, counted only when those carry
   at least 40% of the projection; and full absorption: all main latents silent while the top
   projecting latent (cos >= 0.025) carries at least 40% of it.

The core (`build_probe_data`, `compute_absorption` and the pure functions they call) works on arrays;
`measure_absorption` only gathers the model's activations and caches them with the probes.

Deliberate differences from SAEBench, none of which changes the formulas:
- Prompts are assembled from token ids (BOS, then the examples), so the word is exactly the probed
  token; SAEBench tokenizes a string that starts with a newline and reads a fixed position.
- Probes are scikit-learn fits run to convergence (newton-cg, liblinear for the L1 probe,
  newton-cholesky for the k-sparse probes) instead of 50 Adam epochs; the regularisation strengths
  are SAEBench's (weight decay 1e-4, L1 decay 0.01) rescaled to scikit-learn's `C` (see
  `_l2_probe_c`, `_l1_probe_c`). The k-sparse probes are SAEBench's own scikit-learn setting.
- Latent activations are measured in units of unit-norm decoder rows (activation x decoder-row norm),
  which is what SAEBench gets by folding the decoder norm into pretrained SAEs before evaluating; it
  leaves the caller's SAE untouched.
- Projections are taken on the SAE's own input (after SAELens' run-time input normalisation), so the
  total and the latents' shares are in the same units for SAEs with `normalize_activations`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from saehealth import spelling
from saehealth.errors import IncompatibleSAEError
from saehealth.fingerprint import weights_fingerprint

LETTERS = spelling.LETTERS
N_LETTERS = len(LETTERS)
# Bump when anything that goes into the cached model-level data changes meaning.
CACHE_FORMAT = "absorption-probe-v1"
# SAEBench's test for "this latent is silent" (feature_absorption_calculator.EPS).
SILENT_EPS = 1e-8
RESIDUAL_HOOK = re.compile(r"^blocks\.\d+\.hook_resid_(pre|mid|post)$")

METRIC_KEYS = ("absorption_fraction", "full_absorption_rate", "mean_num_split_features", "absorption_letters_scored")


@dataclass(frozen=True)
class AbsorptionSettings:
    """SAEBench 0.6's absorption defaults (eval_config.py, feature_absorption.py)."""

    n_icl: int = 10  # in-context examples per prompt (max_icl_examples)
    test_fraction: float = 0.2
    min_probe_f1: float = 0.6  # min_GT_probe_f1: letters at or below are skipped
    probe_weight_decay: float = 1e-4  # the ground-truth probe's L2 strength
    probe_max_iter: int = 1000
    max_k: int = 10  # max_k_value
    f1_jump_threshold: float = 0.03
    k_sparse_l1_decay: float = 0.01
    k_probe_max_iter: int = 500
    absorber_cos_threshold: float = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
    full_absorption_cos_threshold: float = 0.025  # FULL_ABSORPTION_PROBE_COS_THRESHOLD
    projection_share_threshold: float = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
    max_absorbing_latents: int = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS


@dataclass
class LetterProbes:
    """Ground-truth probes: one binary logistic regression per letter on the hook's activations."""

    weights: np.ndarray  # (26, d_in) float32; zero rows for letters absent from training
    bias: np.ndarray  # (26,) float32
    # (26,) float64 held-out F1 (logit > 0), NaN where the test split lacks the letter; float64 so an
    # F1 of exactly 0.6 stays at, not above, the threshold.
    f1: np.ndarray

    def scores(self, acts: np.ndarray) -> np.ndarray:
        """Logits (n, 26)."""
        return acts @ self.weights.T + self.bias


@dataclass
class ProbeData:
    """Everything that depends on the model and hook but not on the SAE: cached, reused per sweep."""

    train_acts: np.ndarray  # (n_train, d_in) float32, activation at the word token
    train_labels: np.ndarray  # (n_train,) int64 letter index 0..25
    test_acts: np.ndarray  # (n_test, d_in)
    test_labels: np.ndarray  # (n_test,)
    probes: LetterProbes
    # Activations of the test words under fresh prompts whose examples come from the whole vocabulary
    # (SAEBench recomputes these for the absorption step); rows index into the test set.
    absorption_acts: np.ndarray  # (n_abs, d_in)
    absorption_rows: np.ndarray  # (n_abs,) int64

    @cached_property
    def test_scores(self) -> np.ndarray:
        """The probes' logits on the held-out words, (n_test, 26)."""
        return self.probes.scores(self.test_acts)

    def true_positive_rows(self, letter: int) -> np.ndarray:
        """Positions in `absorption_acts` of held-out words of `letter` that its probe detects."""
        is_tp = (self.test_labels == letter) & (self.test_scores[:, letter] > 0)
        return np.flatnonzero(is_tp[self.absorption_rows])


@dataclass
class MainLatents:
    """A letter's main latents from k-sparse probing, and the held-out F1 of each k tried."""

    ids: list[int]
    f1_by_k: list[float] = field(default_factory=list)


# Per-letter arrays (float64, shape (26,), A..Z, NaN where the letter was not scored); besides them
# `main_latents` (26, max_k) int64 padded with -1 and `k_sparse_f1` (26, max_k), the held-out F1 of
# each k tried, NaN-padded.
PER_LETTER_FLOATS = (
    "probe_f1",
    "absorption_fraction",
    "full_absorption_rate",
    "num_full_absorption",
    "num_probe_true_positives",
    "num_split_features",
)


@dataclass
class AbsorptionResult:
    """The metric values, why they are missing (if they are), per-letter arrays and the time taken.

    `metrics` holds METRIC_KEYS; `per_letter` the arrays named in PER_LETTER_FLOATS plus
    `main_latents` and `k_sparse_f1`, for the companion safetensors file.
    """

    metrics: dict[str, float | int | None]
    not_measured_reason: str | None
    per_letter: dict[str, np.ndarray]
    seconds: float


# ---------------------------------------------------------------- applicability


def absorption_applicable(hook_name: str) -> str | None:
    """None if the first-letter absorption metric applies at this hook, else the reason it does not."""
    if RESIDUAL_HOOK.match(hook_name):
        return None
    return (
        f"absorption is defined for residual-stream SAEs (blocks.N.hook_resid_pre/mid/post); "
        f"{hook_name} is not a residual-stream hook"
    )


# ---------------------------------------------------------------- ground-truth probes


def _f1(y_true: np.ndarray, predicted: np.ndarray) -> float:
    """Binary F1 (0 when there are no true positives), as sklearn's f1_score with zero_division=0.

    Written out because sklearn's input validation costs more than the sum over a few thousand words.
    """
    tp = int(np.sum(y_true & predicted))
    wrong = int(np.sum(y_true != predicted))
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def _blas_single_thread():
    """A context in which numpy/scipy BLAS run on one thread.

    Every fit here is small (thousands of words, at most a few thousand dimensions): BLAS thread
    start-up and spinning cost more than they save, ten times more when the cores are shared.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _l2_probe_c(n: int, n_negative: int, weight_decay: float) -> float:
    """scikit-learn's C for SAEBench's probe objective mean(pos_weight * BCE) + wd/2 * ||w||^2.

    Balanced class weights are SAEBench's pos_weight (neg/pos on positives) times n / (2 neg), so
    C * sum(balanced * loss) + ||w||^2 / 2 equals SAEBench's objective divided by wd when
    C = 2 * neg / (wd * n^2).
    """
    return 2.0 * n_negative / (weight_decay * n * n)


def _l1_probe_c(n: int, n_negative: int, l1_decay: float) -> float:
    """scikit-learn's C for SAEBench's k-sparse L1 probe: mean(pos_weight * BCE) + l1 * ||w||_1."""
    return 2.0 * n_negative / (l1_decay * n * n)


def train_letter_probes(
    train_acts: np.ndarray,
    train_labels: np.ndarray,
    test_acts: np.ndarray,
    test_labels: np.ndarray,
    *,
    settings: AbsorptionSettings | None = None,
    seed: int = 42,
) -> LetterProbes:
    """One-vs-rest logistic-regression probes per letter, trained on raw activations, and held-out F1.

    Raw (unscaled) activations, as in SAEBench, so each probe's weight vector is the letter's
    direction in the hook's space, which the absorption step projects onto.
    """
    from sklearn.linear_model import LogisticRegression

    settings = settings or AbsorptionSettings()
    weights = np.zeros((N_LETTERS, train_acts.shape[1]), dtype=np.float32)
    bias = np.zeros(N_LETTERS, dtype=np.float32)
    f1 = np.full(N_LETTERS, np.nan, dtype=np.float64)
    x_train = train_acts.astype(np.float64)
    n = len(train_labels)
    with _blas_single_thread(), warnings.catch_warnings():
        # A probe that separates its training words perfectly may stop at max_iter; its direction is
        # what we need, and its held-out F1 decides whether the letter is used.
        warnings.simplefilter("ignore", category=UserWarning)
        for letter in range(N_LETTERS):
            y = train_labels == letter
            if not y.any() or y.all():
                continue
            probe = LogisticRegression(
                C=_l2_probe_c(n, int((~y).sum()), settings.probe_weight_decay),
                class_weight="balanced",
                solver="newton-cg",  # the same optimum as lbfgs, in fewer and cheaper iterations here
                max_iter=settings.probe_max_iter,
                random_state=seed,
            )
            probe.fit(x_train, y)
            weights[letter] = probe.coef_[0]
            bias[letter] = probe.intercept_[0]
            y_test = test_labels == letter
            if y_test.any():
                f1[letter] = _f1(y_test, test_acts @ weights[letter] + bias[letter] > 0)
    return LetterProbes(weights=weights, bias=bias, f1=f1)


def build_probe_data(
    train_acts: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | Sequence[int],
    test_acts: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | Sequence[int],
    *,
    absorption_acts: np.ndarray | torch.Tensor | None = None,
    absorption_rows: np.ndarray | Sequence[int] | None = None,
    settings: AbsorptionSettings | None = None,
    seed: int = 42,
) -> ProbeData:
    """Train the ground-truth probes on these activations and bundle everything the SAE step needs.

    Without `absorption_acts`, absorption is measured on the test activations themselves.
    """
    train_x, test_x = _as_array(train_acts), _as_array(test_acts)
    train_y = np.asarray(train_labels, dtype=np.int64)
    test_y = np.asarray(test_labels, dtype=np.int64)
    if absorption_acts is None:
        absorption_x, rows = test_x, np.arange(len(test_y), dtype=np.int64)
    else:
        absorption_x = _as_array(absorption_acts)
        rows = np.asarray(absorption_rows, dtype=np.int64)
    probes = train_letter_probes(train_x, train_y, test_x, test_y, settings=settings, seed=seed)
    return ProbeData(train_x, train_y, test_x, test_y, probes, absorption_x, rows)


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def usable_letters(probes: LetterProbes, min_probe_f1: float) -> list[int]:
    """Letters whose probe's held-out F1 is above the threshold (NaN never is)."""
    return [i for i in range(N_LETTERS) if probes.f1[i] > min_probe_f1]


# ---------------------------------------------------------------- SAE latents


def _latent_scale(sae) -> torch.Tensor:
    """What one unit of each latent adds to the reconstruction's norm: its decoder-row norm.

    SAEBench folds these norms into the encoder before evaluating (`fold_W_dec_norm`), so its
    activations are ours times this; TopK SAEs with `rescale_acts_by_decoder_norm` already decode
    with unit rows.
    """
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return torch.ones(sae.W_dec.shape[0], device=sae.W_dec.device)
    return sae.W_dec.detach().float().norm(dim=-1)


@torch.no_grad()
def encode_latents(sae, acts: np.ndarray, *, batch_size: int = 4096):
    """Latent activations (in unit-decoder units) and the SAE's normalised inputs, batched.

    Returns (latents as a scipy CSR matrix (n, d_sae) float32, SAE inputs (n, d_in) float32).
    """
    from scipy import sparse

    scale = _latent_scale(sae)
    blocks, inputs = [], []
    for start in range(0, len(acts), batch_size):
        x = torch.from_numpy(acts[start : start + batch_size]).to(sae.W_dec.device, sae.dtype)
        latents = sae.encode(x).float() * scale
        blocks.append(sparse.csr_matrix(latents.cpu().numpy()))
        inputs.append(sae.run_time_activation_norm_fn_in(x).float().cpu().numpy())
    if not blocks:
        return sparse.csr_matrix((0, sae.W_dec.shape[0]), dtype=np.float32), acts
    return sparse.vstack(blocks, format="csr"), np.concatenate(inputs)


# ---------------------------------------------------------------- k-sparse probing


def find_main_latents(
    train_latents,
    train_labels: np.ndarray,
    test_latents,
    test_labels: np.ndarray,
    letter: int,
    *,
    settings: AbsorptionSettings | None = None,
    seed: int = 42,
) -> MainLatents:
    """A letter's main latents by SAEBench's k-sparse probing.

    An L1-regularised probe on all latents ranks them by weight (largest first, not by magnitude:
    only latents that predict the letter). For k = 1, 2, ... a logistic regression on the top k
    latents is scored on held-out words; k grows while F1 improves by more than `f1_jump_threshold`
    and the last accepted k's latents are the main ones. Latent matrices may be dense or scipy sparse.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    settings = settings or AbsorptionSettings()
    y_train = train_labels == letter
    y_test = test_labels == letter
    n = len(y_train)
    dense = (lambda m: m.toarray()) if sparse.issparse(train_latents) else np.asarray
    best = -math.inf
    main = MainLatents(ids=[])
    with _blas_single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # convergence notes on separable words
        l1_probe = LogisticRegression(
            C=_l1_probe_c(n, int((~y_train).sum()), settings.k_sparse_l1_decay),
            l1_ratio=1.0,
            solver="liblinear",
            class_weight="balanced",
            # liblinear penalises the intercept as a weight on a constant feature; a large constant
            # makes that penalty negligible, as in SAEBench where the bias is not penalised.
            intercept_scaling=100.0,
            random_state=seed,
        ).fit(train_latents, y_train)
        # Stable sort: ties (exact zeros of the L1 solution) resolve to the lowest latent id.
        ranking = np.argsort(-l1_probe.coef_[0], kind="stable")
        for k in range(1, min(settings.max_k, len(ranking)) + 1):
            ids = ranking[:k]
            x_train = dense(train_latents[:, ids])
            if x_train.any():
                k_probe = LogisticRegression(
                    max_iter=settings.k_probe_max_iter, class_weight="balanced", solver="newton-cholesky"
                ).fit(x_train, y_train)
                f1 = _f1(y_test, k_probe.decision_function(dense(test_latents[:, ids])) > 0)
            else:
                f1 = 0.0  # latents that never fire on the training words predict nothing
            main.f1_by_k.append(f1)
            if f1 > best + settings.f1_jump_threshold:
                best = f1
                main.ids = [int(i) for i in ids]
            else:
                break
    return main


# ---------------------------------------------------------------- per-token absorption


def token_absorption(
    sae_inputs: torch.Tensor,
    latents: torch.Tensor,
    probe_direction: torch.Tensor,
    decoder_cos: torch.Tensor,
    main_ids: Sequence[int],
    settings: AbsorptionSettings | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's absorption fraction and full-absorption flag for each token (vectorised).

    sae_inputs (n, d_in): the SAE's (normalised) inputs; latents (n, d_sae): activations in unit-decoder
    units; probe_direction (d_in,); decoder_cos (d_sae,): cosine of each decoder row with the probe.
    With P the token's projection on the unit probe direction, M the main latents' summed projection
    (activation x cosine) and A the summed projection of the top 3 other latents with cosine >= 0.1 and
    a positive projection: the fraction is 0 if M >= P or A < 0.4 P; 1 if M <= 0; else
    min(A, P - M) / (min(A, P - M) + M). Full absorption: every main latent silent, and the latent
    with the largest projection has cosine >= 0.025 and carries >= 0.4 P. Tokens with P <= 0 are
    never absorbed.
    """
    settings = settings or AbsorptionSettings()
    p = probe_direction / probe_direction.norm()
    total = sae_inputs @ p  # (n,)
    projections = latents * decoder_cos  # (n, d_sae)
    is_main = torch.zeros(latents.shape[1], dtype=torch.bool, device=latents.device)
    is_main[list(main_ids)] = True
    main = projections[:, is_main].sum(dim=1)

    candidate = (~is_main & (decoder_cos >= settings.absorber_cos_threshold)) & (projections > 0)
    candidate_proj = torch.where(candidate, projections, torch.zeros_like(projections))
    k = min(settings.max_absorbing_latents, latents.shape[1])
    absorbers = candidate_proj.topk(k, dim=1).values.sum(dim=1)  # zeros fill in when fewer than k

    positive = total > 0
    safe_total = torch.where(positive, total, torch.ones_like(total))
    absorbed = positive & (main < total) & (absorbers / safe_total >= settings.projection_share_threshold)
    carried = torch.minimum(absorbers, total - main)
    partial = (carried / (carried + main).clamp_min(1e-30)).clamp(0.0, 1.0)
    fraction = torch.where(absorbed, torch.where(main <= 0, torch.ones_like(main), partial), torch.zeros_like(main))

    main_silent = (latents[:, is_main].abs() < SILENT_EPS).all(dim=1)
    top_proj, top_id = projections.max(dim=1)
    full = (
        main_silent
        & positive
        & (decoder_cos[top_id] >= settings.full_absorption_cos_threshold)
        & (top_proj / safe_total >= settings.projection_share_threshold)
    )
    return fraction, full


def absorber_tally(
    latents: torch.Tensor,
    decoder_cos: torch.Tensor,
    main_ids: Sequence[int],
    absorbed: torch.Tensor,
    settings: AbsorptionSettings | None = None,
) -> torch.Tensor:
    """How often each latent is the largest absorber (a non-main latent aligned with the probe, by its
    projection) on the `absorbed` tokens: (d_sae,) counts, for naming a letter's absorbing latents."""
    settings = settings or AbsorptionSettings()
    projections = latents * decoder_cos
    candidate = (decoder_cos >= settings.absorber_cos_threshold) & (projections > 0)
    candidate[:, list(main_ids)] = False
    best = torch.where(candidate, projections, torch.zeros_like(projections)).max(dim=1)
    chosen = best.indices[absorbed & (best.values > 0)]
    return torch.bincount(chosen.cpu(), minlength=latents.shape[1])


# ---------------------------------------------------------------- the SAE-level computation


def compute_absorption(
    data: ProbeData,
    sae,
    *,
    min_letters: int = 20,
    settings: AbsorptionSettings | None = None,
    seed: int = 42,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> AbsorptionResult:
    """Absorption of `sae` on precomputed model-level data (activations, labels, probes).

    `device` is where the per-token projections run (default: the SAE's device); the SAE encodes on
    its own device.
    """
    started = time.perf_counter()
    settings = settings or AbsorptionSettings()
    per_letter = _empty_per_letter(settings.max_k, settings.max_absorbing_latents)
    per_letter["probe_f1"] = data.probes.f1.astype(np.float64)
    letters = usable_letters(data.probes, settings.min_probe_f1)
    metrics: dict[str, float | int | None] = dict.fromkeys(METRIC_KEYS)
    metrics["absorption_letters_scored"] = len(letters)
    if len(letters) < min_letters:
        reason = f"only {len(letters)} letters had probe F1 > {settings.min_probe_f1} (minimum {min_letters})"
        return AbsorptionResult(metrics, reason, per_letter, time.perf_counter() - started)

    device = torch.device(device) if device is not None else sae.W_dec.device
    train_latents, _ = encode_latents(sae, data.train_acts, batch_size=batch_size)
    test_latents, _ = encode_latents(sae, data.test_acts, batch_size=batch_size)
    abs_latents, abs_inputs = encode_latents(sae, data.absorption_acts, batch_size=batch_size)
    decoder = sae.W_dec.detach().float().to(device)
    # Dense latents for at most ~16M entries at a time (64 MiB), however wide the SAE.
    token_chunk = max(1, min(batch_size, 2**24 // decoder.shape[0]))

    for letter in letters:
        main = find_main_latents(
            train_latents, data.train_labels, test_latents, data.test_labels, letter, settings=settings, seed=seed
        )
        per_letter["num_split_features"][letter] = len(main.ids)
        per_letter["main_latents"][letter, : len(main.ids)] = main.ids
        per_letter["k_sparse_f1"][letter, : len(main.f1_by_k)] = main.f1_by_k

        rows = data.true_positive_rows(letter)
        per_letter["num_probe_true_positives"][letter] = len(rows)
        if len(rows) == 0:
            continue
        direction = torch.from_numpy(data.probes.weights[letter]).to(device)
        cos = torch.nn.functional.cosine_similarity(decoder, direction[None, :], dim=-1)
        fractions, full, tally = [], [], torch.zeros(decoder.shape[0], dtype=torch.int64)
        for start in range(0, len(rows), token_chunk):
            chunk = rows[start : start + token_chunk]
            chunk_latents = torch.from_numpy(abs_latents[chunk].toarray()).to(device)
            frac_b, full_b = token_absorption(
                torch.from_numpy(abs_inputs[chunk]).to(device), chunk_latents, direction, cos, main.ids, settings
            )
            tally += absorber_tally(chunk_latents, cos, main.ids, frac_b > 0, settings)
            fractions.append(frac_b.double().cpu())
            full.append(full_b.cpu())
        top = tally.argsort(descending=True, stable=True)[: settings.max_absorbing_latents]
        top = top[tally[top] > 0].numpy()
        per_letter["absorbing_latents"][letter, : len(top)] = top
        n_full = int(torch.cat(full).sum())
        per_letter["absorption_fraction"][letter] = float(torch.cat(fractions).sum()) / len(rows)
        per_letter["num_full_absorption"][letter] = n_full
        per_letter["full_absorption_rate"][letter] = n_full / len(rows)

    scored = np.array(letters)
    metrics["absorption_fraction"] = float(np.nanmean(per_letter["absorption_fraction"][scored]))
    metrics["full_absorption_rate"] = float(np.nanmean(per_letter["full_absorption_rate"][scored]))
    metrics["mean_num_split_features"] = float(np.mean(per_letter["num_split_features"][scored]))
    return AbsorptionResult(metrics, None, per_letter, time.perf_counter() - started)


def _empty_per_letter(max_k: int, absorbers: int) -> dict[str, np.ndarray]:
    """Per-letter arrays in A..Z order; NaN (or -1 for latent ids) where a letter was not scored."""
    arrays = {name: np.full(N_LETTERS, np.nan) for name in PER_LETTER_FLOATS}
    arrays["main_latents"] = np.full((N_LETTERS, max_k), -1, dtype=np.int64)
    # The latents that most often take over on absorbed tokens (most often first), -1 padded.
    arrays["absorbing_latents"] = np.full((N_LETTERS, absorbers), -1, dtype=np.int64)
    arrays["k_sparse_f1"] = np.full((N_LETTERS, max_k), np.nan)
    return arrays


# ---------------------------------------------------------------- the model-facing part


def measure_absorption(
    model,
    sae,
    hook_name: str,
    *,
    min_letters: int = 20,
    seed: int = 42,
    cache_dir: Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    settings: AbsorptionSettings | None = None,
) -> AbsorptionResult:
    """The first-letter absorption metric of `sae` at `hook_name` of `model` (a HookedTransformer).

    Model-level work (prompting, activations, ground-truth probes) is loaded from `cache_dir` when a
    run with the same model weights, tokenizer, hook, seed and settings stored it, and stored there
    otherwise; evaluating a sweep of SAEs at one hook therefore trains the probes once.
    `batch_size` is the number of prompts per model forward pass; `device` is where the per-token
    projections run.
    """
    from saehealth.models import check_hook

    started = time.perf_counter()
    settings = settings or AbsorptionSettings()
    reason = absorption_applicable(hook_name)
    if reason is not None:
        per_letter = _empty_per_letter(settings.max_k, settings.max_absorbing_latents)
        return AbsorptionResult(dict.fromkeys(METRIC_KEYS), reason, per_letter, time.perf_counter() - started)
    check_hook(model, hook_name)
    if sae.cfg.d_in != model.cfg.d_model:
        raise IncompatibleSAEError(
            f"The SAE reads {sae.cfg.d_in}-dimensional activations but {hook_name} has {model.cfg.d_model}: "
            "evaluate it on the model it was trained on."
        )
    data = load_or_build_probe_data(
        model, hook_name, seed=seed, cache_dir=cache_dir, batch_size=batch_size, settings=settings
    )
    result = compute_absorption(data, sae, min_letters=min_letters, settings=settings, seed=seed, device=device)
    result.seconds = time.perf_counter() - started
    return result


def load_or_build_probe_data(
    model,
    hook_name: str,
    *,
    seed: int = 42,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    settings: AbsorptionSettings | None = None,
) -> ProbeData:
    """The model-level data from the cache when present, else gathered, trained and cached."""
    settings = settings or AbsorptionSettings()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(model, hook_name, seed, settings)}.safetensors"
        if path.is_file():
            return _read_probe_data(path)
    data = gather_probe_data(model, hook_name, seed=seed, batch_size=batch_size, settings=settings)
    if path is not None:
        _write_probe_data(path, data, {"model": model.cfg.model_name, "hook_name": hook_name, "seed": str(seed)})
    return data


def gather_probe_data(
    model, hook_name: str, *, seed: int = 42, batch_size: int = 64, settings: AbsorptionSettings | None = None
) -> ProbeData:
    """Prompt the model on its alphabetic vocabulary, read the hook, train the ground-truth probes."""
    settings = settings or AbsorptionSettings()
    tokenizer = model.tokenizer
    vocab = spelling.alphabetic_vocab(tokenizer)
    train, test = spelling.train_test_split_words(vocab, settings.test_fraction, seed)
    n_icl = _icl_examples_that_fit(tokenizer, model.cfg.n_ctx, settings.n_icl)

    def acts(ids: Sequence[int], run_seed: int, pool: Sequence[int] | None = None) -> np.ndarray:
        if not ids:
            return np.zeros((0, model.cfg.d_model), dtype=np.float32)
        return _as_array(
            spelling.word_activations(
                model, hook_name, ids, n_icl=n_icl, batch_size=batch_size, seed=run_seed, icl_pool=pool
            )
        )

    # As SAEBench: training prompts take their examples from the training words, test prompts from
    # the test words; the absorption step re-prompts the probe's true positives with examples drawn
    # from the whole vocabulary.
    train_ids, test_ids = [i for i, _ in train], [i for i, _ in test]
    train_y = np.array([LETTERS.index(spelling.first_letter(w)) for _, w in train], dtype=np.int64)
    test_y = np.array([LETTERS.index(spelling.first_letter(w)) for _, w in test], dtype=np.int64)
    train_x, test_x = acts(train_ids, seed), acts(test_ids, seed + 1)
    probes = train_letter_probes(train_x, train_y, test_x, test_y, settings=settings, seed=seed)
    scores = probes.scores(test_x)
    rows = np.flatnonzero(scores[np.arange(len(test_y)), test_y] > 0).astype(np.int64)
    absorption_x = acts([test_ids[r] for r in rows], seed + 2, pool=[i for i, _ in vocab])
    return ProbeData(train_x, train_y, test_x, test_y, probes, absorption_x, rows)


def _icl_examples_that_fit(tokenizer, n_ctx: int, wanted: int) -> int:
    """As many in-context examples as the context allows, up to `wanted`."""
    suffix = len(tokenizer.encode(spelling.PROMPT_TEMPLATE.format(word=""), add_special_tokens=False))
    answer = max(
        len(tokenizer.encode(spelling.ANSWER_TEMPLATE.format(letter=c) + "\n", add_special_tokens=False))
        for c in LETTERS
    )
    per_example = 1 + suffix + answer
    room = n_ctx - 1 - (1 + suffix)  # BOS, then the word and its question
    return max(0, min(wanted, room // per_example))


# ---------------------------------------------------------------- cache


def model_fingerprint(model) -> str:
    """The model's weights fingerprint (`saehealth.fingerprint`) plus its tokenizer's vocabulary."""
    digest = hashlib.sha256(weights_fingerprint(model).encode())
    vocab = sorted(model.tokenizer.get_vocab().items())
    digest.update(json.dumps(vocab).encode())
    return digest.hexdigest()


def cache_key(model, hook_name: str, seed: int, settings: AbsorptionSettings) -> str:
    """File stem for the model-level data of (model weights, hook, seed, probe settings)."""
    probe_settings = {k: v for k, v in asdict(settings).items() if k in _PROBE_SETTINGS}
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "model": model_fingerprint(model),
            "hook_name": hook_name,
            "seed": seed,
            "settings": probe_settings,
            "template": [spelling.PROMPT_TEMPLATE, spelling.ANSWER_TEMPLATE],
        },
        sort_keys=True,
    )
    safe_hook = re.sub(r"[^A-Za-z0-9_.-]", "_", hook_name)
    return f"absorption-{safe_hook}-seed{seed}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


# Settings that change the cached model-level data (the rest only affect the SAE step).
_PROBE_SETTINGS = {"n_icl", "test_fraction", "probe_weight_decay", "probe_max_iter"}
_ARRAYS = ("train_acts", "train_labels", "test_acts", "test_labels", "absorption_acts", "absorption_rows")


def _write_probe_data(path: Path, data: ProbeData, info: dict[str, str]) -> None:
    """Atomically: parallel evaluations of one sweep may race to write the same entry."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(getattr(data, name)) for name in _ARRAYS}
    tensors |= {
        "probe_weights": data.probes.weights,
        "probe_bias": data.probes.bias,
        "probe_f1": data.probes.f1,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": CACHE_FORMAT, **info})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_probe_data(path: Path) -> ProbeData:
    from safetensors.numpy import load_file

    t = load_file(str(path))
    probes = LetterProbes(weights=t["probe_weights"], bias=t["probe_bias"], f1=t["probe_f1"])
    return ProbeData(**{name: t[name] for name in _ARRAYS}, probes=probes)


__all__ = [
    "AbsorptionResult",
    "AbsorptionSettings",
    "LetterProbes",
    "MainLatents",
    "ProbeData",
    "absorber_tally",
    "absorption_applicable",
    "build_probe_data",
    "compute_absorption",
    "find_main_latents",
    "gather_probe_data",
    "load_or_build_probe_data",
    "measure_absorption",
    "model_fingerprint",
    "token_absorption",
    "train_letter_probes",
]
