"""The converged schedule's letter probes are the minimiser of SAEBench's probe objective, not a point near it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from saehealth.absorption import smooth_probes
from saehealth.absorption.probes import LETTER_PROBE, train_probes

D, N, P = 24, 600, 5


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearly separable letters on features of unequal scales: the case where L-BFGS stopped short."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(N) % P
    centres = torch.randn(P, D, generator=gen) * 2
    scales = torch.logspace(-1, 1, D)
    x = (centres[label] + torch.randn(N, D, generator=gen)) * scales
    return x, torch.nn.functional.one_hot(label, P).bool()


def _scipy_probe(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One letter's probe (w, b) from scipy's L-BFGS-B run to a tight gradient tolerance."""
    n, d = x.shape
    a = np.where(y > 0, (n - y.sum()) / y.sum(), 1.0)
    rho = LETTER_PROBE.n_probes * LETTER_PROBE.weight_decay

    def f(theta):
        z = x @ theta[:d] + theta[d]
        value = np.mean(a * (np.logaddexp(0, z) - y * z)) + rho / 2 * theta @ theta
        dz = a * (1 / (1 + np.exp(-z)) - y) / n
        return value, np.concatenate([x.T @ dz, [dz.sum()]]) + rho * theta

    fit = scipy.optimize.minimize(
        f, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"gtol": 1e-11, "ftol": 0, "maxiter": 20000}
    )
    return fit.x


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_converged_letter_probes_are_the_optimum(solver, monkeypatch):
    """Newton (this width) reaches the minimiser to float32's precision; L-BFGS (what wider models get) stops
    on its gradient tolerance, close to it."""
    if solver == "lbfgs":
        monkeypatch.setattr(smooth_probes, "NEWTON_MAX_WIDTH", D)
    x, labels = _problem(0)
    probes = train_probes(x, labels, LETTER_PROBE, "converged")
    assert bool(probes.converged.all())
    closeness = 1e-5 if solver == "newton" else 1e-3
    for letter in range(P):
        want = _scipy_probe(x.double().numpy(), labels[:, letter].double().numpy())
        got = np.concatenate([probes.weight[letter].double().numpy(), [float(probes.bias[letter])]])
        # float32 storage of the result: agreement to its precision, relative to the probe's size
        assert np.abs(got - want).max() <= closeness * np.abs(want).max(), letter


def test_a_start_elsewhere_reaches_the_same_probes():
    x, labels = _problem(1)
    cold = train_probes(x, labels, LETTER_PROBE, "converged")
    start = (cold.weight.double() + 0.5, cold.bias.double() - 0.5)
    warm = train_probes(x, labels, LETTER_PROBE, "converged", init=start)
    assert torch.allclose(warm.weight, cold.weight, rtol=0, atol=1e-5 * float(cold.weight.abs().max()))
    assert torch.allclose(warm.data_gradient, cold.data_gradient, atol=1e-6)
