"""The SAE-level half of absorption on each word split, under one or more probe schedules.

Both schedules share a split's prompts and the SAE's encodings of its words (computed once per split);
each schedule has its own letter probes (hence its own F1 gate), its own L1 probes for the k-sparse
selection, and so its own main latents and per-word absorption. A split's outcome under a schedule is a
`SplitScore`: the counts SAEBench's per-letter aggregation sums (absorption fractions and full
absorptions over the probe's true positives), which `aggregate.py` pools over the splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

import saehealth.absorption.words as words
from saehealth.absorption.cache import LetterProbes, SplitWords
from saehealth.absorption.ksparse import find_main_latents
from saehealth.absorption.scoring import Thresholds, encode_words, letter_absorption, select_rows


@dataclass
class SplitScore:
    """One split under one schedule. Per-letter arrays are (26,) A..Z; letters not scored hold 0 (counts) or -1.

    `scored` is False when fewer than the minimum number of letters passed the F1 gate: the counts are then
    all zero and only `probe_f1` and `letters_passing` mean anything.
    """

    probe_f1: np.ndarray  # float64, NaN where the letter had no probe
    letters_passing: int  # letters whose probe F1 exceeds the gate
    scored: bool
    scored_letters: np.ndarray = field(default_factory=lambda: np.zeros(26, dtype=bool))
    fraction_sum: np.ndarray = field(default_factory=lambda: np.zeros(26))  # sum of absorption fractions
    true_positives: np.ndarray = field(default_factory=lambda: np.zeros(26, dtype=np.int64))
    full_absorptions: np.ndarray = field(default_factory=lambda: np.zeros(26, dtype=np.int64))
    split_features: np.ndarray = field(default_factory=lambda: np.zeros(26, dtype=np.int64))
    main_latents: np.ndarray | None = None  # (26, max_k) int64, -1 padded
    absorbing_latents: np.ndarray | None = None  # (26, max_absorbers) int64, -1 padded
    l1_converged: np.ndarray | None = None  # (scored letters,) bool


@dataclass
class _Encoded:
    """A split's words through the SAE, shared by every schedule."""

    train_latents: torch.Tensor  # sparse CSR (n_train, d_sae)
    test_latents: torch.Tensor  # sparse CSR (n_test, d_sae)
    absorption_latents: torch.Tensor  # dense or sparse CSR (n_test, d_sae)
    absorption_inputs: torch.Tensor  # (n_test, d_in)
    unit_decoder: torch.Tensor


def score_split(
    labels: torch.Tensor,
    data: SplitWords,
    probes: dict[str, LetterProbes],
    sae,
    *,
    thresholds: Thresholds,
    min_letters: int,
    l1_max_steps: int,
    device: torch.device,
    seed: int,
    warm: dict[str, torch.Tensor | None],
) -> dict[str, SplitScore]:
    """One split under each schedule of `probes` (schedule -> that schedule's letter probes).

    `warm` (schedule -> the previous split's L1 probes or None) is updated in place for the next split.
    """
    scores: dict[str, SplitScore] = {}
    encoded: _Encoded | None = None
    for schedule, fitted in probes.items():
        f1 = fitted.f1.numpy().astype(np.float64)
        letters = [i for i in range(26) if f1[i] > thresholds.min_probe_f1]
        if len(letters) < min_letters:
            scores[schedule] = SplitScore(f1, len(letters), scored=False)
            continue
        if encoded is None:
            encoded = _encode(sae, data, device)
        scores[schedule], warm[schedule] = _score_schedule(
            labels, data, fitted, f1, letters, encoded, schedule, thresholds, l1_max_steps, device, seed, warm[schedule]
        )
    return scores


def _encode(sae, data: SplitWords, device: torch.device) -> _Encoded:
    latents, _ = encode_words(sae, data.probe_acts, device)
    abs_latents, abs_inputs = encode_words(sae, data.absorption_acts, device)
    if abs_latents.shape[0] * abs_latents.shape[1] <= 2**22:  # small enough to hold dense: cheaper row reads
        abs_latents = abs_latents.to_dense()
    unit_decoder = torch.nn.functional.normalize(sae.W_dec.detach().float().to(device), dim=-1)
    train, test = select_rows(latents, data.train), select_rows(latents, data.test)  # once for every schedule
    return _Encoded(train, test, abs_latents, abs_inputs, unit_decoder)


def _score_schedule(labels, data, fitted, f1, letters, enc: _Encoded, schedule, th, l1_max_steps, device, seed, warm):
    labels_d = labels.to(device)
    train, test = data.train.to(device), data.test.to(device)
    main = find_main_latents(
        enc.train_latents,
        labels_d[train],
        enc.test_latents,
        labels_d[test],
        letters,
        schedule=schedule,
        seed=seed,
        thresholds=th,
        l1_max_steps=l1_max_steps,
        warm=warm,
    )
    score = SplitScore(f1, len(letters), scored=True)
    score.main_latents = np.full((26, th.max_k), -1, dtype=np.int64)
    score.absorbing_latents = np.full((26, th.max_absorbers), -1, dtype=np.int64)
    score.l1_converged = main.l1_converged.numpy()
    test_labels = labels[data.test]
    logits = data.probe_acts[data.test] @ fitted.weight.T + fitted.bias  # (n_test, 26)
    for j, letter in enumerate(letters):
        score.scored_letters[letter] = True
        score.main_latents[letter, : main.ids.shape[1]] = main.ids[j].cpu().numpy()
        main_ids = [int(i) for i in main.ids[j] if i >= 0]
        score.split_features[letter] = len(main_ids)
        # SAEBench's potential false negatives: held-out words of the letter that its probe detects.
        tp = torch.nonzero((test_labels == letter) & (logits[:, letter] > 0)).flatten().to(device)
        score.true_positives[letter] = len(tp)
        if len(tp) == 0:
            continue
        total, n_full, tally = letter_absorption(
            enc.absorption_inputs[tp],
            select_rows(enc.absorption_latents, tp),
            fitted.weight[letter],
            enc.unit_decoder,
            main_ids,
            th,
        )
        top = tally.argsort(descending=True, stable=True)[: th.max_absorbers]
        top = top[tally[top] > 0].numpy()
        score.absorbing_latents[letter, : len(top)] = top
        score.fraction_sum[letter] = total
        score.full_absorptions[letter] = n_full
    return score, main.l1_warm


def split_seeds(seed: int, n: int) -> list[int]:
    """The seed of each split's probes (the same for every schedule)."""
    return [words.split_seed(seed, s) for s in range(n)]
