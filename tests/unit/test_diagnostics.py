"""The diagnostics beyond the averages on hand-set tensors whose answers are known exactly (docs/diagnostics.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saehealth.comparison_differences import paired_differences, reference_index
from saehealth.errors import ConfigError
from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.dense_kinds import KINDS, LatentPositionSums, antipodal_pairs, candidate_pairs, classify_dense
from saehealth.metrics.downstream import Readout, SiteFinals, downstream_totals
from saehealth.metrics.firings import find_firings
from saehealth.metrics.positions import PositionAccumulator, bucket_label, position_buckets
from saehealth.metrics.token_explained import TokenSums, token_explained_share
from saehealth.quantities import RATIO_METRICS, paired_totals


def test_buckets_are_log_spaced():
    assert position_buckets(9).tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3]
    assert [bucket_label(b) for b in range(4)] == ["1", "2–3", "4–7", "8–15"]
    assert bucket_label(3, length=9) == "8–9"


def _positions(x, x_hat, mask, reference=None):
    acc = PositionAccumulator(x.shape[-1])
    m = mask.to(torch.float64)
    ref = (x * mask[..., None]).sum((0, 1)) / m.sum() if reference is None else reference
    shifted = (x - ref) * mask[..., None]
    terms = {
        "sse_pos": ((x - x_hat) ** 2).sum(-1).double() * m,
        "sst_pos": (shifted**2).sum(-1).double(),
        "shifted_pos": shifted.sum(0).double(),
    }
    acc.update_reconstruction(terms, mask, mask.to(torch.int64) * 3, ref)
    return acc


def test_a_reconstruction_wrong_only_at_the_first_position():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 3, generator=g, dtype=torch.float64) + 2.0
    x_hat = x.clone()
    x_hat[:, 0] = 0.0  # only position 1 is wrong
    mask = torch.ones(4, 8, dtype=torch.bool)
    out = _positions(x, x_hat, mask).result()
    mu = x.reshape(-1, 3).mean(0)
    expected_first = 1 - (x[:, 0] ** 2).sum() / ((x[:, 0] - mu) ** 2).sum()
    assert out["buckets"] == ["1", "2–3", "4–7", "8"]
    assert out["tokens"] == [4, 8, 16, 4]
    assert out["explained_variance"][0] == pytest.approx(float(expected_first), rel=1e-12)
    assert out["explained_variance"][1:] == [1.0, 1.0, 1.0]
    assert out["l0"] == [3.0, 3.0, 3.0, 3.0]
    assert "delta_ce" not in out  # no model: nothing predicted


def test_positions_merge_exactly_across_references():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 3, generator=g, dtype=torch.float64) + 5.0
    x_hat = x + 0.1 * torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 0] = False
    whole = _positions(x, x_hat, mask).result()
    first, second = _positions(x[:2], x_hat[:2], mask[:2]), _positions(x[2:], x_hat[2:], mask[2:])
    assert not torch.equal(first.reference, second.reference)
    first.merge(second)
    merged = first.result()
    assert merged["tokens"] == whole["tokens"]
    assert merged["explained_variance"][0] is None  # position 1 is masked everywhere
    np.testing.assert_allclose(merged["explained_variance"][1:], whole["explained_variance"][1:], rtol=1e-12)


def test_identical_logits_agree_everywhere_and_a_swapped_top1_disagrees():
    clean = torch.tensor([[[5.0, 4, 3, 2, 1, 0, -1], [0, 1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1, 1]]])
    swapped = clean.clone()
    swapped[0, 0, :2] = torch.tensor([4.0, 5.0])  # position 1: top-1 changes, the top-5 set does not
    swapped[0, 1] = -clean[0, 1]  # position 2: the top-5 shares tokens 2, 3, 4 with the clean one
    tokens, mask = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    site = SiteFinals(clean, None, [clean, swapped])
    shared, _, ((same, other),) = downstream_totals(Readout.identity(7), clean, [site], tokens, mask)
    assert same["top1_agree"].item() == 2 and same["top5_overlap"].item() == 2
    assert other["top1_agree"].item() == 0
    assert other["top5_overlap"].item() == pytest.approx(1 + 3 / 5)
    assert shared["pos_n_pred"].tolist() == [1.0, 1.0]
    assert same["pos_kl_sae"].abs().max().item() < 1e-6
    assert same["pos_ce_sae"].tolist() == pytest.approx(shared["pos_ce_clean"].tolist())


def _latent_sums(acts: torch.Tensor, mask: torch.Tensor, W_dec: torch.Tensor):
    """acts (batch, pos, d_sae) through the pass's firing-based sums, as SAEScorer feeds them."""
    batch, length, d_sae = acts.shape
    sums = LatentPositionSums(d_sae, antipodal_pairs(W_dec))
    found = find_firings(acts.reshape(-1, d_sae), mask.reshape(-1))
    sums.update(found, 0, length)
    firing_counts = torch.bincount(found.latent, minlength=d_sae)
    bucket_tokens = torch.zeros(32, dtype=torch.float64)
    bucket_tokens.index_add_(0, position_buckets(length), mask.sum(0).double())
    return sums, found, firing_counts, bucket_tokens


def test_dense_kinds_first_token_position_antipodal_unexplained():
    batch, length = 8, 16
    mask = torch.ones(batch, length, dtype=torch.bool)
    g = torch.Generator().manual_seed(2)
    acts = torch.zeros(batch, length, 6)
    acts[:, 0, 0] = 100.0  # 0: a huge activation at position 1 only...
    acts[:, 1:, 0] = (torch.rand(batch, length - 1, generator=g) < 0.3).float()  # ...and dense elsewhere
    acts[:, :, 1] = position_buckets(length).float()[None]  # 1: a function of the position bucket
    half = torch.rand(batch, length, generator=g) < 0.5
    acts[:, :, 2] = half.float()  # 2 and 3: one or the other, decoders opposite
    acts[:, :, 3] = (~half).float()
    acts[:, :, 4] = torch.rand(batch, length, generator=g) + 0.1  # 4: dense, nothing explains it
    acts[:, [1, 4, 9], 5] = 1.0  # 5: on 3 of 16 positions (19%), one per bucket: R² = 0.3125 / 2.4375
    W_dec = torch.eye(6, 4)
    W_dec[3] = -W_dec[2]  # cosine −1
    W_dec[5] = torch.tensor([0.0, 1.0, 1.0, 1.0])
    W_dec[4] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    sums, _, counts, bucket_tokens = _latent_sums(acts, mask, W_dec)
    assert sums.pairs.tolist() == [[2, 3]]
    assert sums.cofirings.tolist() == [0]
    density = counts.double() / mask.sum()
    summary, per_latent = classify_dense(density, counts, sums, bucket_tokens, 0.1)
    assert per_latent["position_r2"][1].item() == pytest.approx(1.0, abs=1e-6)
    assert per_latent["position_r2"][5].item() == pytest.approx(0.3125 / 2.4375, rel=1e-6)
    kinds = [KINDS[k] if k >= 0 else None for k in per_latent["dense_kind"].tolist()]
    assert kinds == ["first_token", "position", "antipodal", "antipodal", "unexplained", "unexplained"]
    assert per_latent["antipodal_partner"][2:4].tolist() == [3, 2]
    assert summary["counts"] == {"first_token": 1, "position": 1, "antipodal": 2, "unexplained": 2}


def test_antipodal_decoders_that_fire_together_are_not_a_pair():
    mask = torch.ones(2, 4, dtype=torch.bool)
    acts = torch.ones(2, 4, 2)  # both always on
    W_dec = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    sums, _, counts, bucket_tokens = _latent_sums(acts, mask, W_dec)
    assert sums.cofirings.tolist() == [8]
    _, per_latent = classify_dense(counts.double() / 8, counts, sums, bucket_tokens, 0.1)
    assert per_latent["antipodal_partner"].tolist() == [-1, -1]


def test_a_token_indicator_is_fully_token_explained():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 20, (5, 12), generator=g)
    tokens[0, :3] = 7
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[:, 0] = False
    acts = torch.zeros(5, 12, 3)
    acts[..., 0] = (tokens == 7).float() * 2.5  # 0: the indicator of token 7
    acts[..., 1] = torch.rand(5, 12, generator=g)  # 1: unrelated to the token
    acts[..., 2] = (tokens % 2 == 0).float() * (1 + torch.rand(5, 12, generator=g))  # 2: partly
    sums, _, _, _ = _latent_sums(acts, mask, torch.eye(3))
    token_sums = TokenSums(3)
    flat_acts, flat_mask, flat_tokens = acts.reshape(-1, 3), mask.reshape(-1), tokens.reshape(-1)
    for rows in (slice(0, 24), slice(24, 60)):  # two chunks of whole sequences, as the pass feeds them
        found = find_firings(flat_acts[rows], flat_mask[rows])
        token_sums.update(found, flat_tokens[rows], flat_mask[rows])
    share = token_explained_share(token_sums, sums.bucket_sums.sum(1), sums.sum_sq)
    assert share[0].item() == pytest.approx(1.0, abs=1e-6)
    # latent 2, by brute force: R² of the activation on the token's mean
    a, t = acts[..., 2][mask].double().numpy(), tokens[mask].numpy()
    means = {v: a[t == v].mean() for v in np.unique(t)}
    fitted = np.array([means[v] for v in t])
    expected = 1 - ((a - fitted) ** 2).sum() / ((a - a.mean()) ** 2).sum()
    assert share[2].item() == pytest.approx(expected, rel=1e-5)
    assert 0 <= share[1].item() < 1


def test_paired_difference_is_exact_for_a_known_shift_and_matches_a_bootstrap():
    rng = np.random.default_rng(4)
    n = 60
    totals = paired_totals(2)
    n_tokens = rng.integers(50, 128, n).astype(float)
    per = {}
    for i, extra in ((0, 0.0), (1, 2.0)):
        l0 = n_tokens * rng.uniform(20, 40, n) if i == 0 else per["0/l0"] + extra * n_tokens
        ce_clean = n_tokens * rng.uniform(2, 4, n) if i == 0 else per["0/ce_clean"]
        per |= {
            f"{i}/n_tokens": n_tokens,
            f"{i}/n_pred": n_tokens - 1,
            f"{i}/l0": l0,
            f"{i}/sse": n_tokens * rng.uniform(1, 3, n),
            f"{i}/sst": n_tokens * rng.uniform(8, 10, n),
            f"{i}/ce_clean": ce_clean,
            # Two SAEs at one hook: the same zero ablation, and errors that follow each sequence's difficulty.
            f"{i}/ce_sae": ce_clean + n_tokens * rng.uniform(0.1, 0.5, n)
            if i == 0
            else per["0/ce_sae"] - n_tokens * rng.uniform(0.0, 0.05, n),
            f"{i}/ce_zero": ce_clean + n_tokens * rng.uniform(5, 6, n) if i == 0 else per["0/ce_zero"],
            f"{i}/kl_sae": n_tokens * rng.uniform(0.1, 0.4, n),
            f"{i}/kl_zero": n_tokens * rng.uniform(4, 6, n),
            f"{i}/top1_agree": (n_tokens - 1) * rng.uniform(0.6, 0.9, n),
            f"{i}/top5_overlap": (n_tokens - 1) * rng.uniform(0.6, 0.9, n),
            f"{i}/kl_random": n_tokens * rng.uniform(0.1, 0.2, n),
        }
    totals.update({k: torch.as_tensor(v) for k, v in per.items()})
    side = lambda i, key: tuple({f"{i}/{k}": c for k, c in part.items()} for part in RATIO_METRICS[key])  # noqa: E731
    # SAE 1 fires exactly 2 more latents per token on every sequence: the difference is 2, with no noise.
    difference, se = totals.difference(side(0, "l0"), side(1, "l0"))
    assert difference == pytest.approx(2.0, rel=1e-12) and se == pytest.approx(0.0, abs=1e-9)
    # Loss recovered: the delta-method SE against 4,000 bootstrap resamples of the sequences.
    difference, se = totals.difference(side(0, "loss_recovered"), side(1, "loss_recovered"))

    def loss_recovered(i, rows):
        zero, sae, clean = (per[f"{i}/ce_{v}"][rows].sum() for v in ("zero", "sae", "clean"))
        return (zero - sae) / (zero - clean)

    everything = np.arange(n)
    assert difference == pytest.approx(loss_recovered(1, everything) - loss_recovered(0, everything), rel=1e-12)
    draws = rng.integers(0, n, (4000, n))
    boot = np.array([loss_recovered(1, rows) - loss_recovered(0, rows) for rows in draws])
    assert se == pytest.approx(boot.std(ddof=1), rel=0.1)
    # Pairing matters: the unpaired SE (as if the two SAEs were scored on different sequences) is larger.
    separate = [SequenceTotals(list(RATIO_METRICS["loss_recovered"][0]) + ["ce_clean"]) for _ in range(2)]
    for i, part in enumerate(separate):
        part.update({k: torch.as_tensor(per[f"{i}/{k}"]) for k in part.names})
    unpaired = np.hypot(*(p.ratio(*RATIO_METRICS["loss_recovered"])[1] for p in separate))
    assert unpaired > 2 * se


def test_differences_flag_what_is_within_noise():
    totals = paired_totals(2)
    ones = torch.ones(4, dtype=torch.float64)
    base = {"n_tokens": 10 * ones, "n_pred": 9 * ones, "sse": ones, "sst": 10 * ones, "ce_clean": 9 * ones}
    base |= {"ce_zero": 90 * ones, "kl_sae": ones, "kl_zero": 50 * ones, "top1_agree": 8 * ones}
    base |= {"top5_overlap": 8 * ones, "ce_sae": 18 * ones, "kl_random": ones}
    noisy = torch.tensor([0.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    per = {f"0/{k}": v for k, v in base.items()} | {f"1/{k}": v for k, v in base.items()}
    per |= {"0/l0": 30 * ones, "1/l0": 30 * ones + noisy, "1/ce_sae": 9 * ones}  # a tiny L0 noise; a real CE gain
    totals.update(per)
    metrics = [{"l0": 3.0, "delta_ce": 1.0}, {"l0": 3.01, "delta_ce": 0.0}]
    out = paired_differences(["a", "b"], metrics, [0, 1], totals, reference=0)
    row = out["rows"][0]
    assert row["name"] == "b" and out["reference"] == "a" and out["not_paired"] is None
    assert row["l0"]["within_noise"] is True  # 0.01 against an SE of 0.1 · √(4/3)/√4 · …
    assert row["delta_ce"]["difference"] == -1.0 and row["delta_ce"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert row["delta_ce"]["within_noise"] is False
    assert row["loss_recovered"] == {"difference": None, "se": None, "within_noise": None}
    unpaired = paired_differences(["a", "b"], metrics, [0, None], totals)
    assert unpaired["rows"][0]["l0"]["se"] is None and unpaired["not_paired"]
    assert reference_index(["a", "b"], "b") == 1
    with pytest.raises(ConfigError, match="--reference"):
        reference_index(["a", "b"], "c")


def test_antipodal_candidates_come_from_the_reference_sequences_firings():
    W_dec = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    acts = torch.zeros(20, 5)
    acts[:10, 0] = 1.0  # 0 and 1 fire on the reference sequence, 2 and 3 (antipodal too) never
    acts[10:, 1] = 1.0
    mask = torch.ones(20, dtype=torch.bool)
    assert candidate_pairs(W_dec, acts, mask).tolist() == [[0, 1]]
    assert antipodal_pairs(W_dec).tolist() == [[0, 1], [2, 3]]


def test_latent_and_token_sums_merge_exactly():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 9, (6, 8), generator=g)
    acts = torch.relu(torch.randn(6, 8, 4, generator=g))
    mask = torch.ones(6, 8, dtype=torch.bool)
    W_dec = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])

    def sums(rows: slice):
        latent, token = LatentPositionSums(4, antipodal_pairs(W_dec)), TokenSums(4)
        found = find_firings(acts[rows].reshape(-1, 4), mask[rows].reshape(-1))
        latent.update(found, 0, 8)
        token.update(found, tokens[rows].reshape(-1), mask[rows].reshape(-1))
        return latent, token

    whole_latent, whole_token = sums(slice(0, 6))
    latent, token = sums(slice(0, 2))
    other_latent, other_token = sums(slice(2, 6))
    latent.merge(other_latent)
    token.merge(other_token)
    assert torch.equal(latent.cofirings, whole_latent.cofirings)
    torch.testing.assert_close(latent.bucket_sums, whole_latent.bucket_sums, rtol=1e-12, atol=1e-12)
    share = token_explained_share(token, latent.bucket_sums.sum(1), latent.sum_sq)
    whole = token_explained_share(whole_token, whole_latent.bucket_sums.sum(1), whole_latent.sum_sq)
    torch.testing.assert_close(share, whole, rtol=1e-6, atol=1e-7)


def test_the_random_perturbation_has_the_norm_of_the_sae_error():
    from types import SimpleNamespace

    from saehealth.metrics.pathological import RandomPerturbation

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 8, generator=g)
    x_hat = 0.5 * x
    scorer = SimpleNamespace(last_x_hat=x_hat, sequence_ids=torch.tensor([3, 4]))
    perturbed = RandomPerturbation(scorer).reconstruct(x, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close((perturbed - x).norm(dim=-1), (x - x_hat).norm(dim=-1))
    again = RandomPerturbation(scorer).reconstruct(x, torch.ones(2, 5, dtype=torch.bool))
    assert torch.equal(perturbed, again)  # reproducible: seeded by each sequence's number
    alone = RandomPerturbation(SimpleNamespace(last_x_hat=x_hat[1:], sequence_ids=torch.tensor([4])))
    assert torch.equal(alone.reconstruct(x[1:], torch.ones(1, 5, dtype=torch.bool)), perturbed[1:])  # any batching
    direction = (perturbed - x) / (perturbed - x).norm(dim=-1, keepdim=True)
    assert direction.mul(x / x.norm(dim=-1, keepdim=True)).sum(-1).abs().max() < 0.95  # not along the error
