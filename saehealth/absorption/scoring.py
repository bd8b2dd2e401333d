"""The SAE-level half of absorption: the words' latents and per-word absorption (main latents: ksparse.py).

SAEBench 0.6 (`feature_absorption_calculator.py`):
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

SILENT_EPS = 1e-8  # feature_absorption_calculator.EPS
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
def encode_words(sae, acts: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents as a sparse CSR (n, d_sae) float32 on `device`, the SAE's inputs (n, d_in) on `device`).

    Words are encoded in batches of at most ~16M latent values (4,096 words at d_sae 4,096, 256 at 65,536).
    """
    scale = latent_scale(sae).float().to(device)
    batch_size = max(1, min(4096, 2**24 // sae.W_dec.shape[0]))
    blocks, inputs = [], []
    for start in range(0, len(acts), batch_size):
        x = acts[start : start + batch_size].to(sae.W_dec.device, sae.dtype)
        latents = sae.encode(x).float().to(device).to_sparse_coo().coalesce()
        latents.values().mul_(scale[latents.indices()[1]])  # in place: scaling only what fired
        blocks.append(latents)
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
    candidate_proj = projections * candidate
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
    unit_decoder: torch.Tensor,
    main_ids: Sequence[int],
    thresholds: Thresholds,
) -> tuple[float, int, torch.Tensor]:
    """(sum of absorption fractions, number of full absorptions, absorber tally) over the given words of one
    letter. The tally (d_sae,) counts, per latent, the absorbed words on which it is the largest absorber (a
    latent other than the main ones, aligned with the probe, by its projection): what reports name as the
    letter's absorbing latents.

    `unit_decoder`: the decoder rows normalised to unit length (zero rows stay zero). `latents` is dense
    or sparse CSR; words are densified a chunk at a time (at most ~16M values).
    """
    direction = probe_direction.to(unit_decoder.device, unit_decoder.dtype)
    cos = unit_decoder @ torch.nn.functional.normalize(direction, dim=0)
    chunk = max(1, 2**24 // unit_decoder.shape[0])
    fraction_sum, n_full = 0.0, 0
    tally = torch.zeros(unit_decoder.shape[0], dtype=torch.int64)
    for start in range(0, sae_inputs.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, sae_inputs.shape[0]), device=latents.device)
        dense = select_rows(latents, rows).to_dense()
        fraction, full = token_absorption(sae_inputs[rows], dense, direction, cos, main_ids, thresholds)
        fraction_sum += float(fraction.double().sum())
        n_full += int(full.sum())
        tally += _largest_absorbers(dense, cos, main_ids, fraction > 0, thresholds)
    return fraction_sum, n_full, tally


def _largest_absorbers(latents, decoder_cos, main_ids, absorbed, thresholds: Thresholds) -> torch.Tensor:
    """(d_sae,) counts of each latent being the largest absorber on the `absorbed` words."""
    projections = latents * decoder_cos
    candidate = (decoder_cos >= thresholds.absorber_cos) & (projections > 0)
    candidate[:, list(main_ids)] = False
    best = torch.where(candidate, projections, torch.zeros_like(projections)).max(dim=1)
    chosen = best.indices[absorbed & (best.values > 0)]
    return torch.bincount(chosen.cpu(), minlength=latents.shape[1])
