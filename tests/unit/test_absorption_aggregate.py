"""The per-letter rows and means of absorption over word splits (absorption/aggregate.py), on hand-set counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saehealth.absorption.aggregate import pool
from saehealth.absorption.splits import SplitScore

A, B, C = 0, 1, 2


def _split(passing: int, **letters: tuple[float, int, int, int]) -> SplitScore:
    """A scored split: letter name -> (sum of fractions, true positives, full absorptions, main latents)."""
    score = SplitScore(np.full(26, 0.9), passing, scored=True)
    for name, (fractions, tp, full, features) in letters.items():
        i = ord(name) - ord("a")
        score.scored_letters[i] = True
        score.fraction_sum[i], score.true_positives[i] = fractions, tp
        score.full_absorptions[i], score.split_features[i] = full, features
    score.main_latents = np.full((26, 10), -1)
    score.absorbing_latents = np.full((26, 3), -1)
    return score


def test_rows_pool_the_true_positives_of_every_split_and_the_mean_is_over_rows():
    first = _split(3, a=(1.0, 4, 1, 1), b=(0.0, 2, 0, 2), c=(0.0, 0, 0, 1))
    second = _split(3, a=(2.0, 6, 2, 3), b=(1.0, 2, 1, 2), c=(0.0, 0, 0, 1))
    pooled = pool([first, second], schedule="converged", min_letters=2, min_probe_f1=0.6)

    rows = pooled.per_letter
    assert rows["absorption_fraction"][A] == 3.0 / 10  # (1 + 2) / (4 + 6), divided once
    assert rows["absorption_fraction"][B] == 1.0 / 4
    assert math.isnan(rows["absorption_fraction"][C])  # scored, but no true positive: no row
    assert rows["num_probe_true_positives"][C] == 0
    assert rows["full_absorption_rate"][A] == 3 / 10 and rows["num_full_absorption"][A] == 3
    assert rows["num_split_features"][A] == 2.0  # mean of 1 and 3
    assert math.isnan(rows["num_probe_true_positives"][3])  # D: no split scored it
    assert pooled.metrics["absorption_fraction"] == pytest.approx((0.3 + 0.25) / 2, abs=1e-15)
    assert pooled.metrics["full_absorption_rate"] == pytest.approx((0.3 + 0.25) / 2, abs=1e-15)
    assert pooled.metrics["mean_num_split_features"] == 2.0  # A 2, B 2; C has no row
    # Each split's own mean: (1/4 + 0/2) / 2 and (2/6 + 1/2) / 2. Leaving one split out leaves the other's
    # mean, so the jackknife error is sqrt(1/2 * 2 * (half their difference)^2) = half their difference.
    assert pooled.split_means.tolist() == pytest.approx([0.125, 5 / 12], abs=1e-15)
    assert pooled.standard_error == pytest.approx((5 / 12 - 0.125) / 2, abs=1e-15)
    assert pooled.letters_scored == 3 and pooled.reason is None


def test_the_standard_error_is_the_jackknifes_over_splits():
    splits = [_split(2, a=(float(i), 10, 0, 1), b=(0.0, 10, 0, 1)) for i in (1, 2, 6)]
    pooled = pool(splits, schedule="converged", min_letters=2, min_probe_f1=0.6)
    assert pooled.metrics["absorption_fraction"] == pytest.approx(9 / 30 / 2, abs=1e-15)  # A 9/30, B 0
    left_out = np.array([8 / 20, 7 / 20, 3 / 20]) / 2  # A's pooled fraction without each split, B 0
    expected = math.sqrt(2 / 3 * np.sum((left_out - left_out.mean()) ** 2))
    assert pooled.standard_error == pytest.approx(expected, abs=1e-15)


def test_the_reason_names_the_letter_count_the_result_records():
    splits = [SplitScore(np.full(26, 0.5), n, scored=False) for n in (16, 17, 18, 17, 15)]
    pooled = pool(splits, schedule="saebench-0.6", min_letters=20, min_probe_f1=0.6)

    assert pooled.metrics["absorption_fraction"] is None
    assert pooled.letters_scored == 17
    assert pooled.reason == (
        "only 17 letters had probe F1 > 0.6 (median over 5 word splits, each 16, 17, 18, 17, 15; minimum 20, "
        "saebench-0.6 probes: lower it with --absorption-min-letters)"
    )


def test_an_even_number_of_splits_records_a_whole_letter_count():
    splits = [SplitScore(np.full(26, 0.5), n, scored=False) for n in (16, 17)]
    assert pool(splits, schedule="converged", min_letters=20, min_probe_f1=0.6).letters_scored == 16


def test_splits_below_the_letter_minimum_are_left_out_and_said():
    kept = _split(21, a=(1.0, 4, 0, 1), b=(0.0, 4, 0, 1))
    dropped = SplitScore(np.full(26, 0.5), 12, scored=False)
    pooled = pool([kept, dropped], schedule="converged", min_letters=20, min_probe_f1=0.6)

    assert pooled.metrics["absorption_fraction"] == 0.125 and pooled.splits_scored == 1
    assert pooled.standard_error is None  # one split: no spread to estimate
    assert pooled.notes == [
        "Absorption (converged probes): 1 of 2 word splits had fewer than 20 letters with a usable probe and "
        "were not scored."
    ]
