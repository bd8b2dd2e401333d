"""The converged schedule's smooth (L2-only) letter probes: Newton's method at small widths, L-BFGS above.

Per letter the objective is mean_n a·BCE(z) + rho/2 (||w||² + b²) (probes.py's module docstring), a smooth,
strongly convex problem in d + 1 unknowns. Both solvers reach the same minimiser; what differs is the cost.
Nearly separable letters leave the logistic curvature tiny along some directions, so L-BFGS needs ~160
evaluations per split (each two products of the words by the probes) and could stop on its change tolerance
~1e-4 from the optimum, while Newton needs ~9 steps, each forming every letter's (d + 1)² Hessian over the
words. At the built-in model's width (d = 128) Newton is the cheaper (0.4 s a split against 0.8 s) and
reaches a gradient of 1e-7; the Hessians grow with d², so from NEWTON_MAX_WIDTH up L-BFGS is used (at GPT-2's
768, one Newton step's Hessians are ~90 GFLOP against ~40 GFLOP for all of L-BFGS).
"""

from __future__ import annotations

import torch

from saehealth.absorption.adam_probes import matmul as _matmul

NEWTON_MAX_WIDTH = 256  # inputs (with the bias) up to which Newton's method is used


def per_probe_objective(z, y, a, w, b, objective) -> torch.Tensor:
    """(P,) per-letter objective: mean_n a * BCE + l1 ||w||_1 + rho/2 (||w||^2 + b^2) (`objective`: a
    probes.ProbeObjective)."""
    rho = objective.n_probes * objective.weight_decay
    loss = a * (torch.nn.functional.softplus(z) - y * z)
    return loss.mean(0) + objective.l1 * w.abs().sum(1) + rho / 2 * (w.pow(2).sum(1) + b.pow(2))


def fit_smooth(x, xt, y, a, objective, w, b, *, max_steps: int, tol: float):
    """Minimise the smooth objective from (w, b): x (n, d) float64 and its transpose xt, y (n, P), a (n, P)
    sample weights. Returns (weight (P, d), bias (P,), steps, converged (P,) bool on CPU, the data term's
    gradient (P, d)), floats in float32. `converged`: every entry of the letter's gradient is within the
    solver's threshold (Newton: min(tol, 1e-6); L-BFGS: max(tol, 1e-6), its own stopping test)."""
    solve = _newton if x.shape[1] + 1 <= NEWTON_MAX_WIDTH else _lbfgs
    return solve(x, xt, y, a, objective, w, b, max_steps=max_steps, tol=tol)


def _gradient(x, xt, y, a, rho: float, w, b):
    """(logits (n, P), gradient in (w, b) (P, d + 1)) of the objective: d/dz of mean_n a * BCE is
    a * (sigmoid(z) - y) / n, and the decay adds rho * theta (autograd's result, at less than half its time)."""
    z = _matmul(x, w.T) + b
    dz = a * (torch.sigmoid(z) - y) / x.shape[0]
    return z, torch.cat([_matmul(xt, dz).T + rho * w, (dz.sum(0) + rho * b)[:, None]], dim=1)


def _newton(x, xt, y, a, objective, w, b, *, max_steps: int, tol: float):
    """Newton's method, every letter at once, with an Armijo backtracking line search per letter. The Hessian
    is formed in float32 (it only shapes the step; the float64 gradient and line search decide). Stops when
    every letter's gradient is within `tol` (at most 1e-6) of zero, or after `max_steps` steps."""
    n, d = x.shape
    rho = objective.n_probes * objective.weight_decay
    dense = x.to_dense() if x.layout != torch.strided else x
    features = torch.cat([dense, torch.ones(n, 1, dtype=dense.dtype, device=dense.device)], dim=1).float()
    ridge = rho * torch.eye(d + 1, dtype=torch.float64, device=x.device)
    theta = torch.cat([w, b[:, None]], dim=1)
    threshold = min(tol, 1e-6)

    def evaluate(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-letter objective (P,), gradient (P, d + 1) and logits (n, P)."""
        w, b = theta[:, :d], theta[:, d]
        z, grad = _gradient(x, xt, y, a, rho, w, b)
        return per_probe_objective(z, y, a, w, b, objective), grad, z

    value, grad, z = evaluate(theta)
    converged = grad.abs().amax(1) <= threshold
    steps = 0
    while steps < max_steps and not bool(converged.all()):
        steps += 1
        active = torch.nonzero(~converged).flatten()
        sig = torch.sigmoid(z[:, active])
        curvature = (a[:, active] * sig * (1 - sig) / n).T.float()  # (A, n)
        hess = torch.bmm(features.T[None] * curvature[:, None, :], features.expand(len(active), -1, -1))
        direction = torch.linalg.solve(hess.double() + ridge, grad[active].unsqueeze(-1)).squeeze(-1)
        decrease = (grad[active] * direction).sum(1)
        step = torch.ones(len(active), dtype=theta.dtype, device=theta.device)
        improved = torch.zeros(len(active), dtype=torch.bool, device=theta.device)
        for _ in range(30):
            trial = theta.clone()
            trial[active] = theta[active] - step[:, None] * direction
            trial_value, trial_grad, trial_z = evaluate(trial)
            ok = (trial_value[active] <= value[active] - 1e-4 * step * decrease) & ~improved
            rows = active[ok]
            theta[rows], value[rows], grad[rows] = trial[rows], trial_value[rows], trial_grad[rows]
            z[:, rows] = trial_z[:, rows]
            improved |= ok
            if bool(improved.all()):
                break
            step = torch.where(improved, step, step / 2)
        converged = grad.abs().amax(1) <= threshold
        if not bool(improved.any()):
            break  # no descent left at float64 precision: as converged as it gets
    w, b = theta[:, :d].contiguous(), theta[:, d].contiguous()
    return w.float(), b.float(), steps, converged.cpu(), (grad[:, :d] - rho * w).float()


def _lbfgs(x, xt, y, a, objective, w0, b0, *, max_steps: int, tol: float):
    """torch's L-BFGS (strong Wolfe line search) on all letters' objectives summed, with the gradient written
    out. Stops when the largest gradient entry is within max(tol, 1e-6) of zero, or after `max_steps` steps;
    `converged` says which letters' gradients are."""
    n, d = x.shape
    rho = objective.n_probes * objective.weight_decay
    theta = torch.cat([w0, b0[:, None]], dim=1)
    threshold = max(tol, 1e-6)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1,
        max_iter=max_steps,
        tolerance_grad=threshold,
        tolerance_change=0.0,  # its change test stopped it ~1e-4 short of the optimum: only the gradient's
        history_size=30,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure():
        w, b = theta[:, :d], theta[:, d]
        z, theta.grad = _gradient(x, xt, y, a, rho, w, b)
        return per_probe_objective(z, y, a, w, b, objective).sum()

    optimizer.step(closure)
    steps = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    with torch.no_grad():
        w, b = theta[:, :d].contiguous(), theta[:, d].contiguous()
        _, grad = _gradient(x, xt, y, a, rho, w, b)
    converged = grad.abs().amax(1) <= threshold
    return w.float(), b.float(), int(steps), converged.cpu(), (grad[:, :d] - rho * w).float()
