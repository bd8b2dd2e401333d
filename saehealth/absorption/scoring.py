"""The SAE-level half of absorption: latents, main latents by k-sparse probing, per-word absorption.

SAEBench 0.6 (`k_sparse_probing.py`, `feature_absorption_calculator.py`):
- an L1 probe on all latents ranks them per letter (largest weight first: only latents that predict the
  letter); k-sparse probes on the top k = 1..10 are scored by held-out F1 (logit > 0), and k grows while
  F1 improves by more than 0.03: the last accepted k's latents are the letter's main latents;
- on each held-out word of the letter that the letter probe detects, re-prompted, with P the word's
  projection on the unit probe direction, M the main latents' summed projection (activation x cosine of
  decoder row and probe) and A the summed projection of the top 3 other latents with cosine >= 0.1 and
  a positive projection: the absorption fraction is 0 if M >= P or A < 0.4 P, 1 if M <= 0, else
  min(A, P - M) / (min(A, P - M) + M); full absorption: every main latent silent (< 1e-8), the latent
  with the largest projection has cosine >= 0.025 and carries at least 0.4 P.

Latent activations are in units of unit-norm decoder rows (activation x decoder-row norm), what SAEBench
gets by folding decoder norms into pretrained SAEs; projections are taken on the SAE's own input (after
SAELens' run-time input normalisation), so P and the latents' shares are in the same units.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saehealth.absorption.probes import L1_PROBE, fit_balanced_logistic, train_probes

SILENT_EPS = 1e-8  # feature_absorption_calculator.EPS
# The converged L1 probe stops when no latent violates its optimality conditions by more than this
# fraction of the L1 strength. On the demo SAE 1e-3 gives the top-10 ranking of 1e-7 for every letter
# in 15 Newton steps (1e-4: 23 steps, same ranking; 1e-2: 11 steps, 18 of 22 letters' top 10 the same).
L1_TOLERANCE = 1e-3
# Latents are held as sparse CSR matrices, which torch flags as beta on every construction.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass(frozen=True)
class Thresholds:
    """SAEBench 0.6's absorption constants (eval_config.py, feature_absorption.py)."""

    min_probe_f1: float = 0.6  # min_GT_probe_f1: letters at or below are not scored
    max_k: int = 10  # max_k_value
    f1_jump: float = 0.03  # f1_jump_threshold
    absorber_cos: float = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
    full_absorption_cos: float = 0.025  # FULL_ABSORPTION_PROBE_COS_THRESHOLD
    projection_share: float = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
    max_absorbers: int = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS


def latent_scale(sae) -> torch.Tensor:
    """What one unit of each latent adds to the reconstruction's norm: its decoder-row norm.

    TopK SAEs with `rescale_acts_by_decoder_norm` already decode with unit rows.
    """
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return torch.ones(sae.W_dec.shape[0], device=sae.W_dec.device)
    return sae.W_dec.detach().float().norm(dim=-1)


@torch.no_grad()
def encode_words(sae, acts: torch.Tensor, device, *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents as a sparse CSR (n, d_sae) float32 on `device`, the SAE's inputs (n, d_in) on `device`)."""
    scale = latent_scale(sae)
    blocks, inputs = [], []
    for start in range(0, len(acts), batch_size):
        x = acts[start : start + batch_size].to(sae.W_dec.device, sae.dtype)
        blocks.append((sae.encode(x).float() * scale).to(device).to_sparse_coo())
        inputs.append(sae.run_time_activation_norm_fn_in(x).float().to(device))
    if not blocks:
        empty = torch.zeros(0, sae.W_dec.shape[0], device=device)
        return empty.to_sparse_csr(), torch.zeros(0, acts.shape[1], device=device)
    return torch.cat(blocks).coalesce().to_sparse_csr(), torch.cat(inputs)


def select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a dense or sparse CSR matrix, in the same layout."""
    if x.layout == torch.strided:
        return x[rows.to(x.device)]
    return x.to_sparse_coo().index_select(0, rows.to(x.device)).coalesce().to_sparse_csr()


def binary_f1(y_true: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """F1 per column (0 where there is no true positive), as sklearn's f1_score with zero_division=0."""
    tp = (y_true & predicted).sum(0).double()
    wrong = (y_true != predicted).sum(0).double()
    return torch.where(tp > 0, 2 * tp / (2 * tp + wrong).clamp_min(1), torch.zeros_like(tp))


@dataclass
class MainLatents:
    """Per scored letter: the main latent ids (padded with -1) and the held-out F1 of each k tried (NaN-padded)."""

    ids: torch.Tensor  # (L, max_k) int64
    f1_by_k: torch.Tensor  # (L, max_k) float64
    l1_converged: torch.Tensor  # (L,) bool
    l1_warm: torch.Tensor  # (26, d_sae + 1): the L1 probes' weights and biases, zero for letters not fitted


def find_main_latents(
    train_latents: torch.Tensor,
    train_labels: torch.Tensor,
    test_latents: torch.Tensor,
    test_labels: torch.Tensor,
    letters: Sequence[int],
    *,
    schedule: str,
    seed: int,
    thresholds: Thresholds,
    l1_max_steps: int = 60,
    warm: torch.Tensor | None = None,
) -> MainLatents:
    """SAEBench's k-sparse probing for `letters` at once (latent matrices sparse CSR, labels 0..25).

    `warm` (a previous `l1_warm`) starts the converged L1 probes there: on another word split of the same
    SAE their solution is close, so a few Newton steps finish them.
    """
    letters_t = torch.tensor(list(letters), device=train_labels.device)
    y_train = train_labels[:, None] == letters_t[None, :]  # (n, L)
    y_test = test_labels[:, None] == letters_t[None, :]
    d_sae = train_latents.shape[1]
    init = None
    if warm is not None:
        start = warm[letters_t.cpu()].to(train_latents.device)
        init = (start[:, :d_sae], start[:, d_sae])
    l1 = train_probes(
        train_latents, y_train, L1_PROBE, schedule, seed=seed, max_steps=l1_max_steps, tol=L1_TOLERANCE, init=init
    )
    l1_warm = torch.zeros(26, d_sae + 1) if warm is None else warm.clone()
    l1_warm[letters_t.cpu()] = torch.cat([l1.weight, l1.bias[:, None]], dim=1).cpu()
    # Largest weight first; latents at exactly zero (common at the L1 optimum) by how strongly the data
    # pull them up, so the order does not depend on latent ids.
    order = torch.argsort(l1.data_gradient, dim=1, stable=True)
    order = torch.gather(order, 1, torch.argsort(-torch.gather(l1.weight, 1, order), dim=1, stable=True))
    max_k = min(thresholds.max_k, d_sae)
    ranking = order[:, :max_k]  # (L, max_k)
    train_cols = _columns(train_latents, ranking)  # (L, n, max_k)
    test_cols = _columns(test_latents, ranking)
    n_letters = len(letters)
    # k grows while F1 beats the best so far by more than the jump threshold (k = 1 always passes); each
    # k's probes are fitted only for the letters still growing.
    f1_tried = torch.full((n_letters, thresholds.max_k), float("nan"), dtype=torch.float64)
    best = torch.full((n_letters,), -100.0, dtype=torch.float64)
    chosen = torch.zeros(n_letters, dtype=torch.int64)
    growing = torch.ones(n_letters, dtype=torch.bool)
    for k in range(1, max_k + 1):
        rows = torch.nonzero(growing).flatten()
        if len(rows) == 0:
            break
        on = rows.to(train_cols.device)
        weight, bias = fit_balanced_logistic(train_cols[on, :, :k], y_train.T[on])
        logits = torch.einsum("lnk,lk->ln", test_cols[on, :, :k], weight.to(test_cols.dtype)) + bias[:, None]
        f1 = binary_f1(y_test[:, on], (logits > 0).T).cpu()
        f1_tried[rows, k - 1] = f1
        better = f1 > best[rows] + thresholds.f1_jump
        best[rows[better]], chosen[rows[better]] = f1[better], k
        growing[rows[~better]] = False
    ids = torch.full((n_letters, thresholds.max_k), -1, dtype=torch.int64)
    for i in range(n_letters):
        ids[i, : chosen[i]] = ranking[i, : chosen[i]].cpu()
    return MainLatents(ids, f1_tried, l1.converged, l1_warm)


def _columns(latents: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Dense (L, n, k): for each letter, its k latent columns."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    dense = latents.to_sparse_coo().index_select(1, unique.to(latents.device)).to_dense()
    return dense[:, inverse.to(latents.device)].permute(1, 0, 2)


def token_absorption(
    sae_inputs: torch.Tensor,
    latents: torch.Tensor,
    probe_direction: torch.Tensor,
    decoder_cos: torch.Tensor,
    main_ids: Sequence[int],
    thresholds: Thresholds | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's absorption fraction and full-absorption flag for each word (vectorised).

    sae_inputs (n, d_in); latents (n, d_sae) dense, unit-decoder units; probe_direction (d_in,);
    decoder_cos (d_sae,): cosine of each decoder row with the probe. Words with P <= 0 are never absorbed.
    """
    thresholds = thresholds or Thresholds()
    p = probe_direction / probe_direction.norm()
    total = sae_inputs @ p  # (n,)
    projections = latents * decoder_cos  # (n, d_sae)
    is_main = torch.zeros(latents.shape[1], dtype=torch.bool, device=latents.device)
    is_main[list(main_ids)] = True
    main = projections[:, is_main].sum(dim=1)

    candidate = (~is_main & (decoder_cos >= thresholds.absorber_cos)) & (projections > 0)
    candidate_proj = torch.where(candidate, projections, torch.zeros_like(projections))
    k = min(thresholds.max_absorbers, latents.shape[1])
    absorbers = candidate_proj.topk(k, dim=1).values.sum(dim=1)  # zeros fill in when fewer than k

    positive = total > 0
    safe_total = torch.where(positive, total, torch.ones_like(total))
    absorbed = positive & (main < total) & (absorbers / safe_total >= thresholds.projection_share)
    carried = torch.minimum(absorbers, total - main)
    partial = (carried / (carried + main).clamp_min(1e-30)).clamp(0.0, 1.0)
    fraction = torch.where(absorbed, torch.where(main <= 0, torch.ones_like(main), partial), torch.zeros_like(main))

    main_silent = (latents[:, is_main].abs() < SILENT_EPS).all(dim=1)
    top_proj, top_id = projections.max(dim=1)
    full = (
        main_silent
        & positive
        & (decoder_cos[top_id] >= thresholds.full_absorption_cos)
        & (top_proj / safe_total >= thresholds.projection_share)
    )
    return fraction, full


def letter_absorption(
    sae_inputs: torch.Tensor,
    latents: torch.Tensor,
    probe_direction: torch.Tensor,
    decoder: torch.Tensor,
    main_ids: Sequence[int],
    thresholds: Thresholds,
) -> tuple[float, int]:
    """(sum of absorption fractions, number of full absorptions) over the given words of one letter.

    `latents` is dense or sparse CSR; words are densified a chunk at a time (at most ~16M values).
    """
    direction = probe_direction.to(decoder.device, decoder.dtype)
    cos = torch.nn.functional.cosine_similarity(decoder, direction[None, :], dim=-1)
    chunk = max(1, 2**24 // decoder.shape[0])
    fraction_sum, n_full = 0.0, 0
    for start in range(0, sae_inputs.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, sae_inputs.shape[0]), device=latents.device)
        dense = select_rows(latents, rows).to_dense()
        fraction, full = token_absorption(sae_inputs[rows], dense, direction, cos, main_ids, thresholds)
        fraction_sum += float(fraction.double().sum())
        n_full += int(full.sum())
    return fraction_sum, n_full
