"""SAEBench's 26 one-vs-rest letter probes of a word split, and their held-out F1.

A split's probes are trained on its training words' activations (letters without both positive and
negative training words get a zero probe) and scored by F1 on its test words. Under the saebench-0.6
schedule the splits' probes are independent problems of one shape, so `fit_letter_probes_together`
trains them in one loop of stacked mini-batch steps (the same probes, a fifth of the operations).
"""

from __future__ import annotations

import torch

from saehealth.absorption.cache import LetterProbes, SplitWords
from saehealth.absorption.probes import LETTER_PROBE, TrainedProbes, train_probes, train_probes_together
from saehealth.absorption.scoring import binary_f1


def fit_letter_probes(
    data: SplitWords, labels: torch.Tensor, schedule: str, *, seed: int, init: LetterProbes | None = None
) -> LetterProbes:
    """One split's letter probes under `schedule`; `init` (another split's probes) starts the converged one."""
    y, trainable = _training_targets(data, labels)
    start = None if init is None else (init.weight[trainable], init.bias[trainable])
    fitted = train_probes(data.probe_acts[data.train], y[:, trainable], LETTER_PROBE, schedule, seed=seed, init=start)
    return _scored(data, labels, trainable, fitted)


def fit_letter_probes_together(
    datas: list[SplitWords], labels: torch.Tensor, *, seeds: list[int]
) -> list[LetterProbes]:
    """Each split's saebench-0.6 letter probes, as `fit_letter_probes` gives them, trained together.

    Splits are stacked when they have as many training words and the same trainable letters (the seeded
    splits always do); any other split trains in its own group.
    """
    targets = [_training_targets(data, labels) for data in datas]
    groups: dict[tuple, list[int]] = {}
    for i, (data, (_, trainable)) in enumerate(zip(datas, targets, strict=True)):
        groups.setdefault((len(data.train), tuple(trainable.tolist())), []).append(i)
    probes: list[LetterProbes | None] = [None] * len(datas)
    for members in groups.values():
        trainable = targets[members[0]][1]
        fitted = train_probes_together(
            [datas[i].probe_acts[datas[i].train] for i in members],
            [targets[i][0][:, trainable] for i in members],
            LETTER_PROBE,
            seeds=[seeds[i] for i in members],
        )
        for i, one in zip(members, fitted, strict=True):
            probes[i] = _scored(datas[i], labels, trainable, one)
    return probes  # type: ignore[return-value]  # every index belongs to one group


def _training_targets(data: SplitWords, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot letters of the training words (n_train, 26) bool, the letters with both kinds of word)."""
    y = torch.nn.functional.one_hot(labels[data.train], 26).bool()
    return y, torch.nonzero(y.any(0) & ~y.all(0)).flatten()


def _scored(data: SplitWords, labels: torch.Tensor, trainable: torch.Tensor, fitted: TrainedProbes) -> LetterProbes:
    """The 26 probes (zero where not trainable) with their F1 on the split's test words (NaN: not scored)."""
    d = data.probe_acts.shape[1]
    weight, bias = torch.zeros(26, d), torch.zeros(26)
    weight[trainable], bias[trainable] = fitted.weight.cpu(), fitted.bias.cpu()
    test_y = torch.nn.functional.one_hot(labels[data.test], 26).bool()
    predicted = (data.probe_acts[data.test] @ weight.T + bias) > 0
    scored = test_y.any(0) & torch.isin(torch.arange(26), trainable)
    f1 = torch.where(scored, binary_f1(test_y, predicted), torch.full((26,), float("nan"), dtype=torch.float64))
    return LetterProbes(weight, bias, f1)
