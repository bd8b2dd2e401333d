"""Metric accumulators on hand-made tensors whose answers can be worked out by hand."""

import math

import numpy as np
import pytest
import torch

from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.downstream import DownstreamAccumulator
from saehealth.metrics.geometry import geometry_metrics, max_decoder_cosine
from saehealth.metrics.reconstruction import ReconstructionAccumulator
from saehealth.metrics.sparsity import SparsityAccumulator, dead_rate_bound


def _random_x(seed=0, shape=(3, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) + 3.0  # a large common mean, as residual streams have


def test_perfect_reconstruction_scores_one():
    x = _random_x()
    acc = ReconstructionAccumulator(4)
    acc.update(x, x.clone(), torch.ones(3, 5, dtype=torch.bool))
    m = acc.result()
    assert m["explained_variance"] == pytest.approx(1.0)
    assert m["fvu"] == pytest.approx(0.0)
    assert m["mse"] == pytest.approx(0.0)
    assert m["cossim"] == pytest.approx(1.0)
    assert m["l2_ratio"] == pytest.approx(1.0)
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0)


def test_half_scaled_reconstruction():
    x = _random_x()
    acc = ReconstructionAccumulator(4)
    acc.update(x, x / 2, torch.ones(3, 5, dtype=torch.bool))
    m = acc.result()
    assert m["l2_ratio"] == pytest.approx(0.5)
    assert m["cossim"] == pytest.approx(1.0)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5)


def test_explained_variance_is_pooled_and_streams_across_batches():
    x, noise = _random_x(1, (6, 7, 4)), _random_x(2, (6, 7, 4)) - 3.0
    x_hat = x + 0.3 * noise
    mask = torch.ones(6, 7, dtype=torch.bool)
    mask[:, 0] = False  # BOS-like positions are left out of every average
    xs, rs = x[mask].double().numpy(), x_hat[mask].double().numpy()
    expected_ev = 1 - ((xs - rs) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum()
    expected_mse = ((xs - rs) ** 2).sum() / xs.size

    streamed = ReconstructionAccumulator(4)
    for i in range(0, 6, 2):  # three batches of two sequences
        streamed.update(x[i : i + 2], x_hat[i : i + 2], mask[i : i + 2])
    m = streamed.result()
    assert m["explained_variance"] == pytest.approx(expected_ev, rel=1e-6)
    assert m["fvu"] == pytest.approx(1 - expected_ev, rel=1e-6)
    assert m["mse"] == pytest.approx(expected_mse, rel=1e-6)


def test_downstream_identical_logits_recover_everything():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    zero = torch.randn(2, 6, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 6), generator=g)
    acc = DownstreamAccumulator()
    acc.update({"clean": logits, "sae": logits.clone(), "zero": zero}, tokens, torch.ones(2, 6, dtype=torch.bool))
    m = acc.result()
    assert m["loss_recovered"] == pytest.approx(1.0)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-7)
    assert m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-7)
    assert m["kl_div_score"] == pytest.approx(1.0)


def test_downstream_cross_entropy_and_kl_by_hand():
    vocab = 8
    tokens = torch.tensor([[1, 2, 3, 4]])
    clean = torch.zeros(1, 4, vocab)
    clean[..., 2] = math.log(3)  # p(2) = 3/10, others 1/10
    uniform = torch.zeros(1, 4, vocab)
    acc = DownstreamAccumulator()
    acc.update({"clean": clean, "sae": uniform, "zero": uniform}, tokens, torch.ones(1, 4, dtype=torch.bool))
    m = acc.result()
    # predicting positions 0..2 target tokens 2, 3, 4
    expected_clean = -(math.log(0.3) + 2 * math.log(0.1)) / 3
    assert m["ce_loss_clean"] == pytest.approx(expected_clean, rel=1e-6)
    assert m["ce_loss_with_sae"] == pytest.approx(math.log(vocab), rel=1e-6)
    p = np.array([0.3] + [0.1] * 7)
    assert m["kl_div_with_sae"] == pytest.approx(float((p * np.log(p * vocab)).sum()), rel=1e-6)
    assert m["loss_recovered"] == pytest.approx(0.0, abs=1e-7)  # sae as bad as zero ablation


def test_downstream_masks_special_positions():
    tokens = torch.tensor([[0, 5, 6]])
    clean = torch.zeros(1, 3, 8)
    clean[0, 0, 5] = 10.0  # the BOS position predicts well; it must not count
    acc = DownstreamAccumulator()
    mask = torch.tensor([[False, True, True]])
    acc.update({"clean": clean, "sae": clean, "zero": clean}, tokens, mask)
    assert acc.positions == 1  # only position 1 (predicting token 2); the last position predicts nothing
    assert acc.result()["ce_loss_clean"] == pytest.approx(math.log(8), rel=1e-6)


def test_sparsity_counts_dead_dense_and_l0():
    acts = torch.zeros(1, 4, 5)
    acts[0, :, 0] = 1.0  # latent 0 fires everywhere: dense
    acts[0, 1, 1] = -2.0  # signed activations count as firing
    acts[0, 2, 2] = 0.5
    mask = torch.tensor([[True, True, True, False]])
    acc = SparsityAccumulator(5)
    acc.update(acts, mask)
    m = acc.result()
    assert m["l0"] == pytest.approx((1 + 2 + 2) / 3)
    assert m["l1"] == pytest.approx((1 + 3 + 1.5) / 3)
    assert m["dead_features"] == 2 and m["dead_fraction"] == pytest.approx(0.4)
    assert m["dense_features"] == 3  # densities 1, 1/3, 1/3 are all > 0.1
    assert acc.firing_counts.tolist() == [3, 1, 1, 0, 0]
    assert acc.l0_histogram[:4].tolist() == [0, 1, 2, 0]
    assert dead_rate_bound(300) == pytest.approx(0.01)


def test_decoder_redundancy_finds_duplicates():
    W_dec = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 0.6, 0.8]])
    best = max_decoder_cosine(W_dec, chunk_size=3)  # chunks that split the matrix
    assert best.tolist() == pytest.approx([1.0, 1.0, 0.6, 0.6])
    metrics, _ = geometry_metrics(W_dec)
    assert metrics["decoder_redundancy"] == pytest.approx(0.8)
    assert metrics["near_duplicate_latents"] == 2


def test_sequence_totals_ratio_standard_error_matches_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 1, 40), rng.normal(10, 2, 40)
    totals = SequenceTotals(["a", "b"])
    for i in range(0, 40, 7):
        totals.update({"a": torch.tensor(a[i : i + 7]), "b": torch.tensor(b[i : i + 7])})
    value, se = totals.ratio({"a": 1}, {"b": 1})
    r = a.sum() / b.sum()
    expected = math.sqrt(40 / 39 * ((a - r * b) ** 2).sum() / b.sum() ** 2)
    assert value == pytest.approx(r)
    assert se == pytest.approx(expected, rel=1e-9)
