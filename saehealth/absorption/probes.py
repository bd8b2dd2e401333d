"""The probes of SAEBench 0.6's absorption eval, trained in torch and vectorised over letters.

One objective (SAEBench's `train_multi_probe`, `probing.py`): for probes l = 1..P over words n,

    mean over (n, l) of BCE_pw(x_n . w_l + b_l, y_nl)  +  l1 * mean over l of ||w_l||_1
    +  weight_decay / 2 * (||W||^2 + ||b||^2)

with BCE weighted by pos_weight_l = negatives / positives of probe l (`_calc_pos_weights`) and the
weight decay applied, as Adam's `weight_decay` does, to weights and biases alike. The loss is averaged
over all 26 letters but the decay is not, so per letter it is the objective

    mean_n BCE_pw + l1 * ||w_l||_1 + (26 * weight_decay) / 2 * (||w_l||^2 + b_l^2)

which is what both schedules minimise: the letter probe with weight_decay 1e-4 and no L1, the L1
(k-sparse selection) probe with l1 0.01 and weight_decay 1e-6 (`k_sparse_probing.py`).

Two schedules of one trainer:
- `converged` (default): full batch, float64, until the optimality conditions hold or a cap on steps is
  reached, so a probe is a function of the data and not of the step budget: Newton's method or L-BFGS
  for the smooth letter probe, whichever costs less at its width (`smooth_probes.py`); for the L1 probe, proximal Newton steps on a working set of latents (as glmnet does).
  A start (`init`, e.g. another word split's solution) only saves steps.
- `saebench-0.6`: SAEBench's own schedule, for comparability with published numbers: nn.Linear's
  initialisation, Adam from lr 1e-2 decayed exponentially to 1e-5 over 50 epochs, shuffled mini-batches
  of 64 words (letter probe) or 4,096 (L1 probe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from saehealth.absorption.adam_probes import matmul as _matmul
from saehealth.absorption.adam_probes import train_adam, train_adam_together
from saehealth.absorption.adam_probes import transpose as _transpose
from saehealth.absorption.smooth_probes import fit_smooth, per_probe_objective

SCHEDULES = ("converged", "saebench-0.6")
DENSE_ABOVE = 0.25  # fraction of non-zero inputs above which the converged schedule works on dense inputs
DEFAULT_SCHEDULE = "converged"
N_LETTER_PROBES = 26  # SAEBench averages its probe loss over all 26 letters


@dataclass(frozen=True)
class ProbeObjective:
    """SAEBench's probe loss terms (see the module docstring)."""

    weight_decay: float
    l1: float = 0.0
    n_probes: int = N_LETTER_PROBES
    # SAEBench's schedule for this probe: mini-batch size, epochs, start and end learning rates.
    batch_size: int = 4096
    epochs: int = 50
    lr: float = 1e-2
    end_lr: float = 1e-5


# probing.py `train_linear_probe_for_task` as called by `train_and_save_probes` (batch 64, 50 epochs).
LETTER_PROBE = ProbeObjective(weight_decay=1e-4, batch_size=64)
# k_sparse_probing.py `train_sparse_multi_probe` with eval_config's defaults.
L1_PROBE = ProbeObjective(weight_decay=1e-6, l1=0.01, batch_size=4096)


@dataclass
class TrainedProbes:
    """Probe weights (P, d) and biases (P,), float32, and how the training ended.

    `data_gradient` (P, d) is the gradient of the data term at the solution: for an L1 probe it orders
    the latents whose weight is exactly zero (the one that would enter first as the penalty eases).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    steps: int
    converged: torch.Tensor  # (P,) bool; always True for the fixed saebench-0.6 schedule
    data_gradient: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) logits of inputs x (n, d), dense or sparse."""
        return _matmul(x, self.weight.T.to(x.dtype)) + self.bias.to(x.dtype)


def train_probes(
    x: torch.Tensor,
    labels: torch.Tensor,
    objective: ProbeObjective,
    schedule: str = DEFAULT_SCHEDULE,
    *,
    seed: int = 42,
    max_steps: int = 2000,
    tol: float = 1e-7,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainedProbes:
    """One-vs-rest probes: x (n, d) dense or sparse COO/CSR, labels (n, P) bool; one probe per column.

    Every column needs at least one positive and one negative word. `init` (weights (P, d), biases
    (P,)) is where the converged schedule starts; saebench-0.6 starts from nn.Linear's initialisation.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown probe schedule {schedule!r}: choose from {', '.join(SCHEDULES)}")
    y, pos_weight = _targets(labels, x.device)
    if schedule == "converged":
        return _train_converged(x, y, pos_weight, objective, max_steps=max_steps, tol=tol, init=init)
    weight, bias, steps, grad = train_adam(x, y, pos_weight, objective, seed=seed)
    return TrainedProbes(weight, bias, steps, torch.ones(y.shape[1], dtype=torch.bool), grad)


def train_probes_together(
    xs: list[torch.Tensor], labels: list[torch.Tensor], objective: ProbeObjective, *, seeds: list[int]
) -> list[TrainedProbes]:
    """`train_probes` under the saebench-0.6 schedule for several independent problems of one shape at once.

    xs: dense (n, d) each, labels (n, P) bool each, one seed each: problem i's probes are what
    `train_probes(xs[i], labels[i], objective, "saebench-0.6", seed=seeds[i])` gives, trained in one loop.
    """
    targets = [_targets(y, x.device) for x, y in zip(xs, labels, strict=True)]
    fitted = train_adam_together(xs, [y for y, _ in targets], [pw for _, pw in targets], objective, seeds=seeds)
    return [
        TrainedProbes(weight, bias, steps, torch.ones(weight.shape[0], dtype=torch.bool), grad)
        for weight, bias, steps, grad in fitted
    ]


def _targets(labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels as float64, pos_weight (P,) = negatives / positives); every column needs both."""
    y = labels.to(device=device, dtype=torch.float64)
    positives = y.sum(0)
    if bool(((positives == 0) | (positives == len(y))).any()):
        raise ValueError("every probe needs positive and negative words")
    return y, (len(y) - positives) / positives


# ---------------------------------------------------------------- converged


def _train_converged(x, y, pos_weight, objective: ProbeObjective, *, max_steps: int, tol: float, init):
    """Full batch, float64: the smooth letter probe by `smooth_probes.fit_smooth`, the L1 probe by working-set
    Newton."""
    x = x.to(torch.float64)
    if x.is_sparse:
        x = x.coalesce()
    x = x.to_sparse_csr() if x.is_sparse else x
    if x.layout == torch.sparse_csr and x.values().numel() > DENSE_ABOVE * x.shape[0] * x.shape[1]:
        x = x.to_dense()  # latents that mostly fire: dense products are several times faster
    xt = _transpose(x)
    sample_weight = torch.where(y > 0, pos_weight, torch.ones_like(y))  # d BCE_pw / dz = a * (sigmoid - y)
    n_probes, d = y.shape[1], x.shape[1]
    w = torch.zeros(n_probes, d, dtype=torch.float64, device=x.device)
    b = torch.zeros(n_probes, dtype=torch.float64, device=x.device)
    if init is not None:
        w, b = init[0].to(w), init[1].to(b)
    if objective.l1:
        return _l1_newton(x, xt, y, sample_weight, objective, w, b, max_steps=max_steps, tol=tol)
    weight, bias, steps, converged, data_gradient = fit_smooth(
        x, xt, y, sample_weight, objective, w, b, max_steps=max_steps, tol=tol
    )
    return TrainedProbes(weight, bias, steps, converged, data_gradient)


def _l1_newton(x, xt, y, a, objective: ProbeObjective, w, b, *, max_steps: int, tol: float) -> TrainedProbes:
    """Proximal Newton steps on a working set of latents, for every letter at once (as glmnet does).

    The solution is sparse (a few dozen latents per letter), so each step builds the quadratic model of
    the smooth part only on the current non-zero latents plus the largest violators of the optimality
    conditions, minimises model + L1 by coordinate descent, and backtracks along that direction. It stops
    when no latent violates the optimality conditions by more than `tol` times the L1 strength, or after
    `max_steps` steps.
    """
    n, d = x.shape
    n_probes = y.shape[1]
    rho = objective.n_probes * objective.weight_decay
    lam = objective.l1
    device = x.device
    rows = torch.arange(n_probes, device=device)[:, None]
    columns = _ColumnReader(xt)
    converged = torch.zeros(n_probes, dtype=torch.bool, device=device)
    z = _matmul(x, w.T) + b
    value = per_probe_objective(z, y, a, w, b, objective)
    steps = 0
    while steps < max_steps:
        steps += 1
        sig = torch.sigmoid(z)
        dz = a * (sig - y)
        grad = _matmul(xt, dz).T / n + rho * w  # (P, d) smooth part, weights
        grad_b = dz.mean(0) + rho * b
        pseudo = _pseudo_gradient(grad, w, lam)
        violation = torch.maximum(pseudo.abs().amax(1), grad_b.abs())
        converged = violation <= tol * max(lam, 1e-12)
        if bool(converged.all()):
            break
        # Working set: the non-zero latents and up to WORKING_SET_GROWTH of the worst violators at zero.
        score = torch.where(w != 0, torch.full_like(w, math.inf), pseudo.abs())
        size = int(min(d, int((w != 0).sum(1).max()) + WORKING_SET_GROWTH, MAX_WORKING_SET))
        top = score.topk(size, dim=1)
        ids = top.indices  # (P, m); latents past the violators only widen the (still exact) subproblem
        hess = _working_set_hessian(columns, ids, (a * sig * (1 - sig) / n).T)
        hess = hess + rho * torch.eye(size + 1, dtype=hess.dtype, device=device)
        v0 = torch.cat([torch.gather(w, 1, ids), b[:, None]], dim=1)
        g = torch.cat([torch.gather(grad, 1, ids), grad_b[:, None]], dim=1)
        v = _lasso_coordinate_descent(hess, g, v0, lam)
        delta = v - v0
        decrease = (g * delta).sum(1) + lam * (v[:, :-1].abs().sum(1) - v0[:, :-1].abs().sum(1))
        # Backtracking (Armijo) per letter along the proximal Newton direction.
        step = torch.ones(n_probes, dtype=torch.float64, device=device)
        accepted = converged.clone()
        new_w, new_b, new_z, new_value = w, b, z, value
        for _ in range(30):
            trial = v0 + step[:, None] * delta
            trial_w = w.clone()
            trial_w[rows, ids] = trial[:, :-1]
            trial_b = trial[:, -1]
            trial_z = _matmul(x, trial_w.T) + trial_b
            trial_value = per_probe_objective(trial_z, y, a, trial_w, trial_b, objective)
            ok = (trial_value <= value + 1e-4 * step * decrease) & ~accepted
            new_w = torch.where(ok[:, None], trial_w, new_w)
            new_b = torch.where(ok, trial_b, new_b)
            new_z = torch.where(ok[None, :], trial_z, new_z)
            new_value = torch.where(ok, trial_value, new_value)
            accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step / 2)
        w, b, z, value = new_w, new_b, new_z, new_value
        if not bool((accepted & ~converged).any()):
            break  # no descent left at float64 precision: as converged as it gets
    dz = a * (torch.sigmoid(z) - y)
    grad = _matmul(xt, dz).T / n
    return TrainedProbes(w.float(), b.float(), steps, converged.cpu(), grad.float())


def _lasso_coordinate_descent(hess, g, v0, lam: float, sweeps: int = 30, tol: float = 1e-9) -> torch.Tensor:
    """argmin_v g.(v - v0) + (v - v0).H.(v - v0)/2 + lam * ||v[:-1]||_1.

    Batched over probes; the last coordinate (the bias) carries no L1 term. The problems are tiny
    (a few dozen coordinates), so the sequential sweeps run in numpy, whose per-call cost is a tenth of
    torch's, wherever the tensors live.
    """
    h = hess.detach().cpu().numpy()
    columns = np.ascontiguousarray(h.transpose(2, 0, 1))  # columns[j] = H[:, :, j], (P, m)
    v = np.ascontiguousarray(v0.detach().cpu().numpy().T)  # (m, P): coordinate j of every probe is v[j]
    residual = g.detach().cpu().numpy().copy()  # (P, m): g + H (v - v0)
    diagonal = np.ascontiguousarray(np.maximum(np.diagonal(h, axis1=1, axis2=2), 1e-300).T)
    scale = np.sqrt(diagonal)
    threshold = lam / diagonal
    n_coords = v.shape[0]
    for _ in range(sweeps):
        before = v.copy()  # each coordinate moves once per sweep: its move is after − before
        for j in range(n_coords):
            target = v[j] - residual[:, j] / diagonal[j]
            if j < n_coords - 1:  # soft thresholding: t − clip(t, −θ, θ) is sign(t)·max(|t| − θ, 0), in fewer calls
                target = target - np.minimum(np.maximum(target, -threshold[j]), threshold[j])
            change = target - v[j]
            v[j] += change
            residual += columns[j] * change[:, None]
        if (np.abs(v - before) * scale).max() <= tol:
            break
    return torch.from_numpy(np.ascontiguousarray(v.T)).to(v0.device)


WORKING_SET_GROWTH = 16
MAX_WORKING_SET = 64


def _pseudo_gradient(grad: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The minimum-norm subgradient of smooth + lam * ||w||_1: zero exactly where w is optimal."""
    at_zero = torch.where(grad + lam < 0, grad + lam, torch.where(grad - lam > 0, grad - lam, torch.zeros_like(grad)))
    return torch.where(w != 0, grad + lam * torch.sign(w), at_zero)


class _ColumnReader:
    """Latent columns of x for each probe's working set, from x's transpose (d, n), in float32.

    Held dense when that is small (a dense gather is three times faster than a sparse one), else sparse.
    """

    DENSE_LIMIT = 2**23  # elements: 32 MB of float32

    def __init__(self, xt: torch.Tensor):
        if xt.layout == torch.sparse_csr or xt.is_sparse:
            small = xt.shape[0] * xt.shape[1] <= self.DENSE_LIMIT
            self.xt = xt.to_dense().float() if small else xt.to_sparse_coo().coalesce().float()
        else:
            self.xt = xt.float().contiguous()

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """(P, m, n): row j of probe p is latent ids[p, j]'s column."""
        if not self.xt.is_sparse:
            return self.xt[ids]
        unique, inverse = torch.unique(ids, return_inverse=True)
        return self.xt.index_select(0, unique).to_dense()[inverse]


def _working_set_hessian(columns: _ColumnReader, ids: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """(P, m + 1, m + 1): X' diag(curvature) X on each probe's working set plus the bias (last)."""
    # float32 halves the cost; the Hessian only shapes the step, which the float64 line search then checks.
    x = columns.gather(ids)  # (P, m, n) float32
    weighted = x * curvature[:, None, :].float()
    n_probes, size = ids.shape
    hess = torch.empty(n_probes, size + 1, size + 1, dtype=torch.float64, device=x.device)
    hess[:, :size, :size] = torch.bmm(weighted, x.transpose(1, 2))
    hess[:, :size, size] = hess[:, size, :size] = weighted.sum(2)
    hess[:, size, size] = curvature.sum(1)
    return hess
