"""Main latents by SAEBench 0.6's k-sparse probing (`k_sparse_probing.py`), every letter at once.

An L1 probe on all latents ranks them per letter (largest weight first: only latents that predict the
letter); k-sparse probes on the top k = 1..10 are scikit-learn `LogisticRegression(class_weight=
"balanced")` fits in SAEBench (C = 1, unpenalised intercept, run to convergence), which
`fit_balanced_logistic` solves by batched Newton steps; each is scored by held-out F1 (logit > 0), and
k grows while F1 improves by more than 0.03: the last accepted k's latents are the letter's main latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saehealth.absorption.probes import L1_PROBE, train_probes
from saehealth.absorption.scoring import Thresholds, binary_f1

# The converged L1 probe stops when no latent violates its optimality conditions by more than this
# fraction of the L1 strength. On the demo SAE 1e-3 gives the top-10 ranking of 1e-7 for every letter
# in 15 Newton steps (1e-4: 23 steps, same ranking; 1e-2: 11 steps, 18 of 22 letters' top 10 the same).
L1_TOLERANCE = 1e-3


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
    fitted = torch.zeros(n_letters, max_k + 1, dtype=torch.float64)  # the last k's weights, then the intercept
    for k in range(1, max_k + 1):
        rows = torch.nonzero(growing).flatten()
        if len(rows) == 0:
            break
        on = rows.to(train_cols.device)
        # Each letter's k − 1 solution (the new latent at zero) starts Newton near the k solution.
        start = torch.cat([fitted[rows, : k - 1], torch.zeros(len(rows), 1, dtype=fitted.dtype), fitted[rows, -1:]], 1)
        weight, bias = fit_balanced_logistic(train_cols[on, :, :k], y_train.T[on], init=start.to(on.device))
        fitted[rows, :k] = weight.cpu().to(fitted.dtype)
        fitted[rows, -1] = bias.cpu().to(fitted.dtype)
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


def fit_balanced_logistic(
    x: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-10, init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's `LogisticRegression(class_weight="balanced")` (C = 1, lbfgs) for a batch of problems.

    x (P, n, k), labels (P, n) bool: minimises sum_i c_i * logloss_i + ||w||^2 / 2 with balanced class
    weights c_i = n / (2 * n_class(i)) and an unpenalised intercept, by damped Newton steps (the problems
    have at most a few dozen unknowns). `init` (P, k + 1): weights then intercept to start from (the optimum
    does not depend on it). Returns weights (P, k) and intercepts (P,), float32.
    """
    x = x.to(torch.float64)
    y = labels.to(device=x.device, dtype=torch.float64)
    n_probes, n, k = x.shape
    pos = y.sum(1, keepdim=True)
    c = torch.where(y > 0, n / (2 * pos), n / (2 * (n - pos)))
    # Features by row, (P, k + 1, n) with the intercept's ones last: every product below is then a long
    # matrix-vector or matrix-matrix product (with k, at most a dozen, innermost they ran ~10× slower).
    xb = torch.cat([x.transpose(1, 2), torch.ones(n_probes, 1, n, dtype=x.dtype, device=x.device)], dim=1)
    penalty = torch.ones(k + 1, dtype=x.dtype, device=x.device)
    penalty[-1] = 0
    theta = torch.zeros(n_probes, k + 1, dtype=x.dtype, device=x.device)
    if init is not None:
        theta = init.to(theta).clone()

    def objective(th):
        """Per-problem objective (P,) and the logits (P, n) it was computed from."""
        z = torch.bmm(th[:, None, :], xb)[:, 0]
        return (c * (torch.nn.functional.softplus(z) - y * z)).sum(1) + 0.5 * (penalty * th * th).sum(1), z

    value, z = objective(theta)
    for _ in range(max_iter):
        sig = torch.sigmoid(z)
        grad = torch.bmm(xb, (c * (sig - y))[:, :, None])[..., 0] + penalty * theta
        curvature = c * sig * (1 - sig)
        hess = torch.bmm(xb * curvature[:, None, :], xb.transpose(1, 2)) + torch.diag_embed(penalty)
        hess = hess + 1e-12 * torch.eye(k + 1, dtype=x.dtype, device=x.device)
        direction = torch.linalg.solve(hess, grad)
        decrement = (grad * direction).sum(1)
        if bool((decrement <= tol * value.abs().clamp_min(1.0)).all()):
            break
        # Backtracking per problem: halve the step until the objective does not increase.
        step = torch.ones(n_probes, dtype=x.dtype, device=x.device)
        for _ in range(30):
            trial_theta = theta - step[:, None] * direction
            trial, trial_z = objective(trial_theta)
            worse = trial > value
            if not bool(worse.any()):
                break
            step = torch.where(worse, step / 2, step)
        better = trial <= value
        theta = torch.where(better[:, None], trial_theta, theta)
        value = torch.where(better, trial, value)
        z = torch.where(better[:, None], trial_z, z)
    return theta[:, :k].float(), theta[:, k].float()
