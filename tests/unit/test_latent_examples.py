"""The latent-examples accumulator (saehealth/metrics/latents.py) on hand-made activations, against a
brute-force pass over every firing."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import saehealth.metrics.latents as latents_module
from saehealth.metrics.latents import (
    LatentExamples,
    firing_keys,
    latent_hashes,
    token_hashes,
    token_locations,
)

RADIUS = 2


def activations(batch=24, length=16, d_sae=9, seed=0):
    """Sparse non-negative activations with ties planted (equal values at different positions), a mask with
    every sequence's first position (BOS) and one other position masked."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(batch, length, d_sae, generator=g) - 0.6)
    acts[3, 5, 2] = acts[7, 9, 2] = acts[1, 4, 2] = 9.0  # a three-way tie at the top of latent 2
    acts[:, :, 8] = 0.0  # latent 8 never fires
    acts[5, 3, 8] = 0.5  # ... except once
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, 0] = False
    mask[2, 6] = False
    return acts, mask


def collect(acts, mask, chunks, top=4, sample=3, seed=0, first=0):
    """One accumulator fed `acts` in chunks of `chunks` sequences."""
    examples = LatentExamples(acts.shape[-1], top, sample, window=RADIUS, seed=seed)
    for start in range(0, acts.shape[0], chunks):
        part = acts[start : start + chunks]
        examples.update(
            part, mask[start : start + chunks], *token_locations(part.shape[0], part.shape[1], first + start, "cpu")
        )
    return examples


def brute_force(acts, mask, top, sample, seed=0):
    """Per latent: the top firings by (value desc, sequence, position) and the sample by (key desc, ...)."""
    batch, length, d_sae = acts.shape
    seqs, poss = token_locations(batch, length, 0, "cpu")
    keys = firing_keys(token_hashes(seqs, poss, seed)[..., None], latent_hashes(torch.arange(d_sae)))
    want_top, want_sample, counts = [], [], []
    for latent in range(d_sae):
        fired = [(s, p) for s in range(batch) for p in range(length) if mask[s, p] and acts[s, p, latent] != 0]
        counts.append(len(fired))
        by_value = sorted(fired, key=lambda sp: (-float(acts[sp[0], sp[1], latent]), sp))
        by_key = sorted(fired, key=lambda sp: (-int(keys[sp[0], sp[1], latent]), sp))
        want_top.append(by_value[:top])
        want_sample.append(by_key[:sample])
    return want_top, want_sample, counts


def kept(arrays, kind, latent):
    pairs = zip(arrays[f"{kind}_sequence"][latent].tolist(), arrays[f"{kind}_position"][latent].tolist(), strict=True)
    return [(s, p) for s, p in pairs if s >= 0]


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name == "activation_mean":  # float64 sums in another order
            torch.testing.assert_close(x, y, equal_nan=True)
        elif x.is_floating_point():
            assert torch.equal(x.float().nan_to_num(-7.0), y.float().nan_to_num(-7.0)), name
        else:
            assert torch.equal(x, y), name


@pytest.mark.parametrize("chunks", [1, 5, 24])
@pytest.mark.parametrize("preselect", [4, 10**9])
def test_top_and_sample_match_brute_force_across_chunks(chunks, preselect, monkeypatch):
    monkeypatch.setattr(latents_module, "_PRESELECT_ABOVE", preselect)  # both ways through `offer`
    acts, mask = activations()
    arrays = collect(acts, mask, chunks).arrays()
    want_top, want_sample, counts = brute_force(acts, mask, 4, 3)
    for latent in range(acts.shape[-1]):
        assert kept(arrays, "top", latent) == want_top[latent]
        assert kept(arrays, "sample", latent) == want_sample[latent]
        values = [float(acts[s, p, latent]) for s, p in want_top[latent]]
        assert arrays["top_values"][latent][: len(values)].tolist() == pytest.approx(values)
    assert arrays["firing_counts"].tolist() == counts
    assert kept(arrays, "top", 2)[:3] == [(1, 4), (3, 5), (7, 9)]  # the tie goes to the earliest firings
    assert kept(arrays, "top", 8) == [(5, 3)] and math.isnan(arrays["top_values"][8][1])  # empty slots stay empty


def test_statistics_are_over_every_firing():
    acts, mask = activations()
    arrays = collect(acts, mask, 7).arrays()
    for latent in range(acts.shape[-1]):
        fired = acts[..., latent][mask & (acts[..., latent] != 0)]
        assert int(arrays["activation_histogram"][latent].sum()) == fired.numel()
        assert float(arrays["activation_mean"][latent]) == pytest.approx(float(fired.double().mean()))
        assert float(arrays["activation_max"][latent]) == pytest.approx(float(fired.max()))
        edges = arrays["activation_histogram_edges"]
        bins = (torch.bucketize(fired.double(), edges, right=True) - 1).clamp(
            0, edges.numel() - 2
        )  # ends catch the rest
        assert torch.equal(
            arrays["activation_histogram"][latent], torch.bincount(bins, minlength=edges.numel() - 1).int()
        )


def test_merge_of_halves_equals_one_pass():
    acts, mask = activations(batch=30)
    one = collect(acts, mask, 30)
    # Ranks see other halves in other orders; the merge must not care.
    second, first = collect(acts[15:], mask[15:], 4, first=15), collect(acts[:15], mask[:15], 6)
    second.merge(first)
    same(one.arrays(), second.arrays())
    assert second.tokens == one.tokens == int(mask.sum())


def test_merge_refuses_other_settings():
    with pytest.raises(ValueError, match="different settings"):
        LatentExamples(4, 3).merge(LatentExamples(4, 5))


def test_windows_are_cut_at_the_sequence_edges_and_masked_positions():
    acts = torch.zeros(2, 6, 1)
    acts[0, :, 0] = torch.tensor([7.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # position 0 is masked (BOS)
    acts[1, 5, 0] = 6.0
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 0] = False
    examples = LatentExamples(1, top=6, sample=1, window=RADIUS)
    examples.update(acts, mask, *token_locations(2, 6, 0, "cpu"))
    arrays = examples.arrays()
    windows = {
        (s, p): w.float().tolist()
        for s, p, w in zip(
            arrays["top_sequence"][0].tolist(), arrays["top_position"][0].tolist(), arrays["top_window"][0], strict=True
        )
    }
    nan = float("nan")

    def close(a, b):
        return all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b, strict=True))

    assert close(windows[(1, 5)], [0.0, 0.0, 6.0, nan, nan])  # the sequence's end: nothing after it
    assert close(windows[(0, 1)], [nan, nan, 1.0, 2.0, 3.0])  # its start: before it only the masked BOS
    assert close(windows[(0, 5)], [3.0, 4.0, 5.0, nan, nan])
    assert (1, 0) not in windows and (0, 0) not in windows  # masked positions are not firings


def test_windows_stop_at_the_chunk_and_never_cross_into_another_sequence():
    acts = torch.ones(3, 4, 1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    examples = LatentExamples(1, top=12, sample=1, window=RADIUS)
    examples.update(acts, mask, *token_locations(3, 4, 0, "cpu"))
    arrays = examples.arrays()
    for seq, pos, window in zip(
        arrays["top_sequence"][0].tolist(), arrays["top_position"][0].tolist(), arrays["top_window"][0], strict=True
    ):
        finite = [pos + o for o in range(-RADIUS, RADIUS + 1) if not math.isnan(float(window[o + RADIUS]))]
        assert finite == [q for q in range(pos - RADIUS, pos + RADIUS + 1) if 0 <= q < 4], (seq, pos)


def test_sample_is_uniform_over_firings():
    # 2,000 latents firing on all 64 tokens (8 sequences of 8, fed 2 sequences at a time): each latent's
    # sample of 4 is an independent draw (its own hash), so every token should be picked 4/64 of the time.
    latents, sample = 2000, 4
    acts = torch.ones(8, 8, latents)
    mask = torch.ones(8, 8, dtype=torch.bool)
    arrays = collect(acts, mask, 2, top=1, sample=sample, seed=7).arrays()
    token = arrays["sample_sequence"] * 8 + arrays["sample_position"].long()
    assert (token >= 0).all() and all(len(set(row)) == sample for row in token.tolist())  # without replacement
    picks = torch.bincount(token.reshape(-1), minlength=64)
    _, p_value = stats.chisquare(picks.numpy())
    assert p_value > 0.001, picks


def test_sample_keys_differ_between_latents():
    seqs, poss = token_locations(1, 4096, 0, "cpu")
    tokens = token_hashes(seqs, poss, 0)[0]
    a = firing_keys(tokens, latent_hashes(torch.tensor(0)))
    b = firing_keys(tokens, latent_hashes(torch.tensor(1)))
    rho = stats.spearmanr(a.numpy(), b.numpy())[0]
    assert abs(rho) < 0.1  # two latents do not rank the same tokens alike


def test_signed_activations_rank_by_value():
    acts = torch.tensor([[[-3.0], [2.0], [-0.5], [1.0]]])
    examples = LatentExamples(1, top=4, sample=1, window=0)
    examples.update(acts, torch.ones(1, 4, dtype=torch.bool), *token_locations(1, 4, 0, "cpu"))
    assert examples.arrays()["top_values"][0].tolist() == [2.0, 1.0, -0.5, -3.0]


def test_the_stated_state_size_is_every_tensor_the_accumulator_holds():
    from saehealth.metrics.latents import state_bytes

    for top, sample in ((20, None), (3, 7), (1, 0)):
        acc = LatentExamples(100, top, sample)
        held = [t for part in (acc, acc.top, acc.sample) for t in vars(part).values() if isinstance(t, torch.Tensor)]
        assert sum(t.numel() * t.element_size() for t in held) == state_bytes(100, top, sample)
    assert state_bytes(65_536) == 65_536 * 2_188
