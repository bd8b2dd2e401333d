"""Decoder (and encoder) geometry in blocks: every block size gives the all-at-once answer (exactly on hand-set
rows), ties to the lowest index, antipodal partners through `with_min`."""

from __future__ import annotations

import pytest
import torch

from saehealth.metrics.geometry import block_rows_for, geometry_metrics, nearest_latents

# Hand-set rows whose cosines are known: 1 duplicates 0 (twice its length), 4 is 0's opposite, 6 duplicates 3.
ROWS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [2.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.6, 0.8],
        [-1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.6, 0.8],
    ]
)
# Per row: (largest cosine, its latent, smallest cosine, its latent); ties go to the lowest index.
EXPECTED = [
    (1.0, 1, -1.0, 4),
    (1.0, 0, -1.0, 4),
    (0.6, 3, 0.0, 0),  # 0 with latents 0, 1, 4 and 5: the lowest wins
    (1.0, 6, 0.0, 0),
    (0.0, 2, -1.0, 0),  # -1 with both 0 and 1; 0 with 2, 3, 5, 6
    (0.8, 3, 0.0, 0),  # 0.8 with both 3 and 6
    (1.0, 3, 0.0, 0),
]


def test_hand_set_rows_give_the_known_neighbours_in_every_block_size():
    for block_rows in range(1, len(ROWS) + 2):
        found = nearest_latents(ROWS, block_rows=block_rows, with_min=True)
        assert found.max_cosine.tolist() == pytest.approx([e[0] for e in EXPECTED], abs=1e-6), block_rows
        assert found.max_index.tolist() == [e[1] for e in EXPECTED], block_rows
        assert found.min_cosine.tolist() == pytest.approx([e[2] for e in EXPECTED], abs=1e-6), block_rows
        assert found.min_index.tolist() == [e[3] for e in EXPECTED], block_rows


def test_blocked_equals_unblocked_on_random_rows():
    """The same cosines and neighbours whatever the block size. A BLAS kernel may round a block of a few rows
    differently from a large one (a matrix-vector product sums in another order): values then differ in the last
    bit, never more; blocks of 8 rows and more give identical bits here."""
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(300, 16, generator=gen)
    W_dec[200] = -W_dec[20] * 2  # an antipodal pair across blocks (exact duplicates make ties: the hand-set test)
    whole = nearest_latents(W_dec, block_rows=300, with_min=True)
    assert whole.min_index[200] == 20 and whole.min_index[20] == 200 and whole.min_cosine[20] == pytest.approx(-1)
    for block_rows in (1, 7, 64, 299):
        blocked = nearest_latents(W_dec, block_rows=block_rows, with_min=True)
        assert torch.equal(blocked.max_index, whole.max_index) and torch.equal(blocked.min_index, whole.min_index)
        torch.testing.assert_close(blocked.max_cosine, whole.max_cosine, rtol=0, atol=3e-7)
        torch.testing.assert_close(blocked.min_cosine, whole.min_cosine, rtol=0, atol=3e-7)
    metrics, per_latent = geometry_metrics(W_dec, block_rows=13)
    assert torch.equal(per_latent["max_decoder_cosine"], whole.max_cosine)
    assert torch.equal(per_latent["nearest_decoder_latent"], whole.max_index)
    assert metrics["decoder_redundancy"] == pytest.approx(float(whole.max_cosine.double().mean()), rel=1e-12)


def test_without_min_only_the_maximum_is_returned_and_one_latent_has_no_neighbour():
    found = nearest_latents(ROWS)
    assert found.min_cosine is None and found.min_index is None
    single = nearest_latents(torch.ones(1, 4), with_min=True)
    assert single.max_index.tolist() == [-1] and single.min_index.tolist() == [-1]
    assert single.max_cosine.tolist() == [0.0]


def test_default_blocks_hold_at_most_the_budget():
    assert block_rows_for(65_536) == 2**26 // (4 * 65_536) == 256
    assert block_rows_for(10**9) == 1
