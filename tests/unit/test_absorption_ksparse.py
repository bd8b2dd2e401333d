"""The k-sparse probes are scikit-learn's balanced logistic regression, and the L1 probe's sparse products are
the dense ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from saehealth.absorption.adam_probes import train_adam
from saehealth.absorption.ksparse import fit_balanced_logistic
from saehealth.absorption.probes import L1_PROBE, _targets


def _problems(n: int = 400, k: int = 4, n_problems: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_problems, n, k, generator=gen) * (torch.rand(n_problems, n, k, generator=gen) < 0.3) * 4
    labels = (x[..., 0] + torch.randn(n_problems, n, generator=gen) > 1.0) | (
        torch.rand(n_problems, n, generator=gen) < 0.05
    )
    return x, labels


@pytest.mark.parametrize("start", [None, "elsewhere"])
def test_balanced_logistic_is_scikit_learns(start):
    x, labels = _problems()
    init = None if start is None else torch.randn(x.shape[0], x.shape[2] + 1, dtype=torch.float64)
    weight, bias = fit_balanced_logistic(x, labels, init=init)
    for p in range(x.shape[0]):
        want = LogisticRegression(class_weight="balanced", C=1.0, tol=1e-10, max_iter=10000)
        want.fit(x[p].double().numpy(), labels[p].numpy())
        assert np.allclose(weight[p].numpy(), want.coef_[0], atol=1e-4), p
        assert float(bias[p]) == pytest.approx(float(want.intercept_[0]), abs=1e-4)


def test_the_l1_probes_sparse_products_give_the_dense_products_probes():
    gen = torch.Generator().manual_seed(3)
    n, d, n_probes = 300, 64, 4
    dense = torch.rand(n, d, generator=gen) * (torch.rand(n, d, generator=gen) < 0.05)  # 5% non-zero: CSR
    letter = torch.arange(n) % n_probes
    dense[torch.arange(n), letter] += 2.0  # each letter's own latent
    y, pos_weight = _targets(torch.nn.functional.one_hot(letter, n_probes).bool(), "cpu")
    sparse_run = train_adam(dense.to_sparse_csr(), y, pos_weight, L1_PROBE, seed=7)
    dense_run = train_adam(dense, y, pos_weight, L1_PROBE, seed=7)
    for got, want in zip(sparse_run[:2], dense_run[:2], strict=True):
        assert torch.allclose(got, want, atol=1e-5)
