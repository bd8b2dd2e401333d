"""Metric accumulators on hand-made tensors whose answers can be worked out by hand."""

import math

import numpy as np
import pytest
import torch

from saehealth.metrics import downstream
from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.downstream import DownstreamAccumulator, Readout, SiteFinals, downstream_totals
from saehealth.metrics.geometry import geometry_metrics, nearest_latents
from saehealth.metrics.reconstruction import ReconstructionAccumulator
from saehealth.metrics.sparsity import SparsityAccumulator, dead_rate_bound
from saehealth.saebench.sums import SAEBenchSums


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


def _saebench_06_explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """SAEBench 0.6's core-eval explained variance (`get_sparsity_and_variance_metrics`), restated for
    one batch of tokens (n, d): 1 - mean ||x - x_hat||^2 / (mean ||x||^2 - (mean over tokens and
    dimensions of x^2)^2). The subtracted term is (mean ||x||^2 / d)^2, not ||mean x||^2."""
    residual = (x - x_hat).pow(2).sum(-1).mean()
    total = x.pow(2).sum(-1).mean() - x.pow(2).mean(0).mean() ** 2
    return float(1 - residual / total)


def test_explained_variance_against_saebench_06s_formula_by_hand():
    # Two tokens (3, 1) and (1, 3): mean ||x||^2 = 10, mean x = (2, 2), so the variance about the mean
    # is 10 - 8 = 2 per token; the error (0.5, 0.5) or (-0.5, -0.5) costs 0.5 per token.
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    x_hat = x + torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    acc = ReconstructionAccumulator(2)
    acc.update(x[None], x_hat[None], torch.ones(1, 2, dtype=torch.bool))
    assert acc.result()["explained_variance"] == pytest.approx(1 - 0.5 / 2)
    # SAEBench subtracts (10 / 2)^2 = 25 instead of 8: a "variance" of 10 - 25 = -15, EV 1 + 0.5/15.
    assert _saebench_06_explained_variance(x, x_hat) == pytest.approx(1 + 0.5 / 15)


def test_saebench_06s_formula_is_not_the_variance_on_residual_like_data():
    """On data with a large common mean (as residual streams have) the two formulas part."""
    x = _random_x(3, (1, 200, 4))[0]
    x_hat = x + 0.3 * (_random_x(4, (1, 200, 4))[0] - 3.0)
    acc = ReconstructionAccumulator(4)
    acc.update(x[None], x_hat[None], torch.ones(1, 200, dtype=torch.bool))
    xs, rs = x.double(), x_hat.double()
    correct = 1 - (xs - rs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
    assert acc.result()["explained_variance"] == pytest.approx(float(correct), rel=1e-6)
    assert abs(_saebench_06_explained_variance(xs, rs) - float(correct)) > 0.05


def _downstream(clean, sae, zero, tokens, mask):
    """Score logits directly (an identity readout): the accumulator after one batch."""
    site = SiteFinals(zero, None, [sae])
    shared, (at_site,), ((own,),) = downstream_totals(Readout.identity(clean.shape[-1]), clean, [site], tokens, mask)
    acc = DownstreamAccumulator()
    acc.update({**shared, **at_site, **own})
    return acc


def test_downstream_identical_logits_recover_everything():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    zero = torch.randn(2, 6, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 6), generator=g)
    m = _downstream(logits, logits.clone(), zero, tokens, torch.ones(2, 6, dtype=torch.bool)).result()
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
    m = _downstream(clean, uniform, uniform, tokens, torch.ones(1, 4, dtype=torch.bool)).result()
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
    acc = _downstream(clean, clean, clean, tokens, torch.tensor([[False, True, True]]))
    assert acc.positions == 1  # only position 1 (predicting token 2); the last position predicts nothing
    assert acc.result()["ce_loss_clean"] == pytest.approx(math.log(8), rel=1e-6)


def test_downstream_tiles_and_shared_zero_give_the_untiled_answer(monkeypatch):
    """Tiles of a few positions (and a zero ablation of batch 1, broadcast and cached) change nothing."""
    g = torch.Generator().manual_seed(1)
    clean, sae = torch.randn(5, 9, 13, generator=g) * 3, torch.randn(5, 9, 13, generator=g) * 3
    zero_one = torch.randn(1, 9, 13, generator=g)
    tokens = torch.randint(0, 13, (5, 9), generator=g)
    mask = torch.rand(5, 9, generator=g) > 0.2
    readout = Readout.identity(13)
    whole = downstream_totals(
        readout, clean, [SiteFinals(zero_one.expand(5, -1, -1), None, [sae, clean])], tokens, mask
    )
    # By hand, with torch's own log-softmax, over every predicting position.
    weight = mask[:, :-1].double()
    targets = tokens[:, 1:, None]
    log_p = clean[:, :-1].log_softmax(-1)
    log_q = sae[:, :-1].log_softmax(-1)
    ce_clean = -(log_p.gather(-1, targets).squeeze(-1).double() * weight).sum(1)
    kl_sae = ((log_p.exp() * (log_p - log_q)).sum(-1).double() * weight).sum(1)
    assert whole[0]["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
    assert whole[2][0][0]["kl_sae"] == pytest.approx(kl_sae, rel=1e-5, abs=1e-6)
    assert whole[2][0][1]["kl_sae"] == pytest.approx(torch.zeros(5), abs=1e-5)

    monkeypatch.setattr(downstream, "tile_rows", lambda d_vocab, device: 3)  # one sequence split in 3 tiles
    for _ in range(2):  # the second batch reads the cached zero logits
        tiled = downstream_totals(readout, clean, [SiteFinals(zero_one, "site", [sae, clean])], tokens, mask)
        for got, want in zip([tiled[0], *tiled[1], *tiled[2][0]], [whole[0], *whole[1], *whole[2][0]], strict=True):
            for name in want:
                assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-6), name
    assert list(readout.zero_cache) == [("site", 8)]


def test_tiles_are_sized_by_memory_not_by_a_small_vocabulary():
    """At GPT-2's vocabulary a CPU tile holds a thousand positions (not 41: the unembedding's product wants many
    rows), and never more than its memory budget allows."""
    assert downstream.tile_rows(4096, "cpu") == downstream.tile_rows(50257, "cpu") == downstream.TILE_ROWS_CPU == 1024
    huge = 2**26
    assert downstream.tile_rows(huge, "cpu") * huge * 4 * downstream._TILE_COPIES <= downstream.TILE_BYTES_MAX
    assert downstream.tile_rows(50257, "cuda") == downstream.TILE_ELEMENTS_ACCELERATOR // 50257


def test_softmax_logsumexp_matches_torch():
    logits = torch.randn(4, 7, 50) * 20
    p, lse = downstream._softmax_logsumexp(logits)
    assert lse == pytest.approx(torch.logsumexp(logits, -1), abs=1e-5)
    assert p == pytest.approx(torch.softmax(logits, -1))


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
    best = nearest_latents(W_dec, block_rows=3).max_cosine  # blocks that split the matrix
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


def test_accumulators_merge_exactly():
    """Two shares of the data accumulated apart (each about its own reference mean, as on two torchrun ranks) and
    merged give the numbers of one accumulator that saw it all."""
    from saehealth.sae_scorer import Tally

    x = _random_x(3, (8, 6, 4))
    x_hat = x + 0.2 * (_random_x(4, (8, 6, 4)) - 3.0)
    acts = torch.relu(_random_x(5, (8, 6, 7)) - 3.5)
    mask = torch.ones(8, 6, dtype=torch.bool)
    mask[:, 0] = False
    names = ["n_pred", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero", "top1_agree", "top5_overlap", "kl_random"]
    downstream = {name: torch.arange(8, dtype=torch.float64) * (i + 1) + i for i, name in enumerate(names)}

    def tally(rows: slice) -> Tally:
        t = Tally(ReconstructionAccumulator(4), DownstreamAccumulator(), SparsityAccumulator(7), SAEBenchSums(7))
        per_sequence = {k: v[rows] for k, v in downstream.items()}
        t.saebench.update(x[rows], x_hat[rows], acts[rows], mask[rows])
        t.downstream.update(per_sequence)
        per_sequence.update(t.reconstruction.update(x[rows], x_hat[rows], mask[rows]))
        per_sequence.update(n_tokens=mask[rows].sum(1), l0=t.sparsity.update(acts[rows], mask[rows]).sum(1))
        t.totals.update(per_sequence)
        t.n_sequences = t.totals.n_sequences
        return t

    whole, merged, second = tally(slice(0, 8)), tally(slice(0, 3)), tally(slice(3, 8))
    assert not torch.equal(merged.reconstruction.reference, second.reconstruction.reference)
    merged.merge(second)
    a, b = whole.output(), merged.output()
    for key, value in a.metrics.items():
        if value is not None:  # per-token norms are float32 about each share's own reference: rounding only
            assert b.metrics[key] == pytest.approx(value, rel=1e-7), key
    for key in ("l0", "loss_recovered", "delta_ce", "kl_div_score"):
        assert b.uncertainty[key] == pytest.approx(a.uncertainty[key], rel=1e-9), key
    assert torch.equal(b.details["firing_counts"], a.details["firing_counts"])
    assert torch.equal(b.details["l0_histogram"], a.details["l0_histogram"])
    assert b.n_sequences == a.n_sequences == 8
    # SAEBench's per-latent counts add up (its per-batch means depend on the batches, by its definition).
    for key in ("saebench_feature_density", "consistent_activation_heuristic"):
        assert torch.allclose(b.details[key], a.details[key], equal_nan=True), key
    for key in ("l1", "l2_norm_in", "l2_norm_out", "frac_alive"):
        assert b.saebench[key] == pytest.approx(a.saebench[key], rel=1e-9), key
