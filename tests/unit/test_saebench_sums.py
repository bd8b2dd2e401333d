"""SAEBench 0.6's core definitions, streamed: checked against SAEBench's per-batch recipe written out directly.

The reference below follows evals/core/main.py step by step on the kept (unmasked) positions: per-batch
lists of per-token values concatenated and averaged, per-batch means averaged over batches, the
explained variance's A − (A/d)² denominator."""

import math

import pytest
import torch

from saehealth.metrics.downstream import Readout
from saehealth.metrics.encoder_geometry import encoder_geometry
from saehealth.saebench.core import CORE_KEYS, core_metrics
from saehealth.saebench.sums import SAEBenchSums, frequency_values, last_position_kl


def _batches(seed=0, n_batches=3, batch=2, pos=5, d_in=4, d_sae=6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        x = torch.randn(batch, pos, d_in, generator=g, dtype=torch.float64) + 2.0
        x_hat = x + 0.4 * torch.randn(batch, pos, d_in, generator=g, dtype=torch.float64)
        f = torch.randn(batch, pos, d_sae, generator=g, dtype=torch.float64)  # signed: f > 0 and f ≠ 0 differ
        f[f.abs() < 0.5] = 0.0
        mask = torch.ones(batch, pos, dtype=torch.bool)
        mask[:, 0] = False  # BOS
        mask[-1, -(b + 1) :] = False  # batches keep different numbers of positions
        if b == 1:
            x[0, 2] = 1e-5  # below SAEBench's 1e-4 norm floor for l2_ratio
        out.append((x, x_hat, f, mask))
    return out


def _reference(batches, d_sae):
    lists = {k: [] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "rrb", "l1", "mse", "legacy")}
    mean_sq, mean_per_dim, mean_resid = [], [], []
    acts, prompts, tokens = torch.zeros(d_sae, dtype=torch.float64), torch.zeros(d_sae, dtype=torch.float64), 0
    for x, x_hat, f, mask in batches:
        keep = mask.flatten()
        xi, xo, fa = x.flatten(0, 1)[keep], x_hat.flatten(0, 1)[keep], f.flatten(0, 1)[keep]
        n_in, n_out = xi.norm(dim=-1), xo.norm(dim=-1)
        divisor = torch.where(n_in.abs() < 1e-4, torch.ones_like(n_in), n_in)
        lists["l2_norm_in"].append(n_in)
        lists["l2_norm_out"].append(n_out)
        lists["l2_ratio"].append(n_out / divisor)
        lists["rrb"].append(((n_out**2).mean() / (xi * xo).sum(-1).mean()).unsqueeze(0))
        lists["l1"].append(fa.sum(-1))
        rss = (xi - xo).pow(2).sum(-1)
        lists["mse"].append(rss / keep.sum())
        lists["legacy"].append(1 - rss / (xi - xi.mean(0)).pow(2).sum(-1))
        mean_sq.append(xi.pow(2).sum(-1).mean(0))
        mean_per_dim.append(xi.pow(2).mean(0))
        mean_resid.append(rss.mean(0))
        fired = ((f * mask[..., None]) > 0).double()
        acts += fired.sum(1).sum(0)
        prompts += (fired.sum(1) > 0).sum(0)
        tokens += int(mask.sum())
    values = {k: float(torch.cat(v).mean()) for k, v in lists.items()}
    total_variance = torch.stack(mean_sq).mean(0) - torch.cat(mean_per_dim).mean(0) ** 2
    values["ev"] = float(1 - torch.stack(mean_resid).mean(0) / total_variance)
    return values, acts / tokens, acts / prompts


def test_sums_match_saebench_recipe():
    batches, d_sae = _batches(), 6
    sums = SAEBenchSums(d_sae)
    for x, x_hat, f, mask in batches:
        sums.update(x, x_hat, f, mask)
    values, per_latent = sums.result(d_in=4)
    expected, density, cah = _reference(batches, d_sae)
    assert values["explained_variance"] == pytest.approx(expected["ev"], rel=1e-12)
    assert values["explained_variance_legacy"] == pytest.approx(expected["legacy"], rel=1e-12)
    assert values["mse"] == pytest.approx(expected["mse"], rel=1e-12)
    assert values["relative_reconstruction_bias"] == pytest.approx(expected["rrb"], rel=1e-12)
    for key in ("l1", "l2_norm_in", "l2_norm_out", "l2_ratio"):
        assert values[key] == pytest.approx(expected[key], rel=1e-12), key
    torch.testing.assert_close(per_latent["saebench_feature_density"], density)
    torch.testing.assert_close(per_latent["consistent_activation_heuristic"], cah, equal_nan=True)
    assert values["kl_div_score"] is None  # no downstream totals: not measured


def test_sums_differ_from_saehealth_where_saebench_does():
    """SAEBench's explained variance subtracts the squared mean of x² instead of ‖μ‖²: with a large common
    component the two differ, which is why the export computes SAEBench's own number."""
    (x, x_hat, f, mask), *_ = _batches(n_batches=1)
    sums = SAEBenchSums(6)
    sums.update(x + 10.0, x_hat + 10.0, f, mask)
    saebench_ev = sums.result(4)[0]["explained_variance"]
    xs, rs = (x + 10.0)[mask], (x_hat + 10.0)[mask]
    pooled = 1 - float(((xs - rs) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum())
    assert abs(saebench_ev - pooled) > 0.01


def test_a_latent_that_never_fires_has_no_consistency():
    x = torch.ones(1, 3, 2)
    f = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    sums = SAEBenchSums(2)
    sums.update(x, x, f, torch.ones(1, 3, dtype=torch.bool))
    _, per_latent = sums.result(2)
    assert per_latent["consistent_activation_heuristic"][0] == 2.0  # 2 positions in 1 prompt
    assert math.isnan(per_latent["consistent_activation_heuristic"][1])


def test_frequency_values_by_hand():
    values = frequency_values(torch.tensor([0.0, 0.005, 0.02, 0.5]))
    assert values["frac_alive"] == 0.75
    assert values["freq_over_1_percent"] == 0.5
    assert values["freq_over_10_percent"] == 0.25
    assert values["normalized_freq_over_1_percent"] == pytest.approx(0.52 / 0.525)
    assert values["normalized_freq_over_10_percent"] == pytest.approx(0.5 / 0.525)
    silent = frequency_values(torch.zeros(3))
    assert silent["normalized_freq_over_1_percent"] == 0.0 and silent["frac_alive"] == 0.0


def _kl(p_logits, q_logits):
    p = torch.softmax(p_logits.double(), -1)
    return float((p * (torch.log_softmax(p_logits.double(), -1) - torch.log_softmax(q_logits.double(), -1))).sum())


def test_last_position_kl_counts_the_last_position_only():
    g = torch.Generator().manual_seed(3)
    clean, spliced = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    zero = torch.randn(1, 4, 7, generator=g)  # one zero-ablated sequence, shared
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    shared, (own,) = last_position_kl(Readout.identity(7), clean, zero, [spliced], mask)
    assert shared["n_last"].tolist() == [1.0, 0.0]
    assert own["kl_sae_last"][0].item() == pytest.approx(_kl(clean[0, -1], spliced[0, -1]), rel=1e-5)
    assert own["kl_sae_last"][1].item() == 0.0  # masked
    assert shared["kl_zero_last"][0].item() == pytest.approx(_kl(clean[0, -1], zero[0, -1]), rel=1e-5)


def test_kl_over_all_positions():
    """SAEBench's KL averages the predicting positions' KL and the last positions' together."""
    sums = SAEBenchSums(2)
    x, f = torch.ones(2, 3, 2), torch.zeros(2, 3, 2)
    downstream = {
        "kl_sae": torch.tensor([0.2, 0.4], dtype=torch.float64),
        "kl_zero": torch.tensor([2.0, 4.0], dtype=torch.float64),
        "n_pred": torch.tensor([2.0, 2.0], dtype=torch.float64),
        "kl_sae_last": torch.tensor([0.3, 0.0], dtype=torch.float64),
        "kl_zero_last": torch.tensor([3.0, 0.0], dtype=torch.float64),
        "n_last": torch.tensor([1.0, 0.0], dtype=torch.float64),
    }
    sums.update(x, x, f, torch.ones(2, 3, dtype=torch.bool), downstream)
    values, _ = sums.result(2)
    assert values["kl_div_with_sae"] == pytest.approx(0.9 / 5)
    assert values["kl_div_with_ablation"] == pytest.approx(9.0 / 5)
    assert values["kl_div_score"] == pytest.approx(1 - 0.9 / 9.0)


class _Weights(torch.nn.Module):
    def __init__(self, W_enc, W_dec, **biases):
        super().__init__()
        self.W_enc, self.W_dec = torch.nn.Parameter(W_enc), torch.nn.Parameter(W_dec)
        for name, value in biases.items():
            setattr(self, name, torch.nn.Parameter(value))


def test_encoder_geometry_by_hand():
    W_enc = torch.tensor([[3.0, 0.0, 1.0], [4.0, 2.0, 1.0]])  # (d_in 2, d_sae 3): columns are latents
    W_dec = torch.tensor([[3.0, 4.0], [1.0, 0.0], [-1.0, -1.0]])
    stats = encoder_geometry(_Weights(W_enc, W_dec, b_enc=torch.tensor([0.5, -1.0, 0.0])))
    torch.testing.assert_close(stats["encoder_norm"], torch.tensor([5.0, 2.0, math.sqrt(2)]))
    torch.testing.assert_close(stats["encoder_bias"], torch.tensor([0.5, -1.0, 0.0]))
    torch.testing.assert_close(stats["encoder_decoder_cosine"], torch.tensor([1.0, 0.0, -1.0]))
    # unit columns (0.6, 0.8), (0, 1), (1, 1)/√2: cosines 0–1 0.8, 0–2 1.4/√2, 1–2 1/√2
    torch.testing.assert_close(stats["max_encoder_cosine"], torch.tensor([1.4 / math.sqrt(2), 0.8, 1.4 / math.sqrt(2)]))
    gated = encoder_geometry(_Weights(W_enc, W_dec, b_gate=torch.zeros(3), b_mag=torch.tensor([1.0, 2.0, 3.0])))
    torch.testing.assert_close(gated["encoder_bias"], torch.tensor([1.0, 2.0, 3.0]))  # as SAEBench reports gated SAEs
    torch.testing.assert_close(encoder_geometry(_Weights(W_enc, W_dec))["encoder_bias"], torch.zeros(3))


def test_core_metrics_take_shared_definitions_from_saehealth():
    metrics = {"loss_recovered": 0.9, "ce_loss_clean": 3.0, "ce_loss_with_sae": 3.2, "ce_loss_zero_ablation": 5.0,
               "cossim": 0.8, "l0": 12.0, "decoder_redundancy": 0.3}  # fmt: skip
    values = core_metrics(metrics, {"mse": 0.1, "l1": -2.0}, {"max_encoder_cosine": torch.tensor([0.2, 0.4])}, 640)
    assert set(values) == set(CORE_KEYS)
    assert (values["ce_loss_score"], values["ce_loss_without_sae"], values["ce_loss_with_ablation"]) == (0.9, 3.0, 5.0)
    assert (values["cossim"], values["l0"], values["average_max_decoder_cosine_sim"]) == (0.8, 12.0, 0.3)
    assert (values["mse"], values["l1"]) == (0.1, -2.0)
    assert values["average_max_encoder_cosine_sim"] == pytest.approx(0.3)
    assert values["total_tokens_eval_reconstruction"] == values["total_tokens_eval_sparsity_variance"] == 640
    assert values["kl_div_score"] is None
