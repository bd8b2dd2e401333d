"""The five splits' saebench-0.6 letter probes trained in one stacked loop are the probes each split trains alone.

The stacked loop does each problem's arithmetic element for element (batched products compute each
problem's product as `addmm` does; the sigmoid runs per problem where stacking would move its elements
across a vector block), so the probes are equal bit for bit, not merely close: any difference would be
a different computation, which is what these tests are there to catch.
"""

from __future__ import annotations

import torch

from saehealth.absorption.cache import SplitWords
from saehealth.absorption.letter_probes import fit_letter_probes, fit_letter_probes_together
from saehealth.absorption.probes import ProbeObjective, train_probes, train_probes_together

D = 32


def _problem(n: int, n_probes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Words around one centre per probe (n, D), one-hot labels (n, P): every probe has both kinds of word."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_probes, D, generator=gen) * 3
    label = torch.arange(n) % n_probes
    x = centres[label] + torch.randn(n, D, generator=gen)
    return x, torch.nn.functional.one_hot(label, n_probes).bool()


def test_stacked_adam_gives_each_problem_its_own_probes_exactly():
    # 150 words: mini-batches of 64, 64 and 22 (a last batch whose elements straddle vector blocks).
    objective = ProbeObjective(weight_decay=1e-4, batch_size=64, epochs=4)
    problems = [_problem(150, 4, seed) for seed in (0, 1, 2)]
    seeds = [11, 12, 13]
    together = train_probes_together([x for x, _ in problems], [y for _, y in problems], objective, seeds=seeds)
    assert not torch.equal(together[0].weight, together[1].weight)  # each problem keeps its own data and seed
    for (x, y), seed, stacked in zip(problems, seeds, together, strict=True):
        alone = train_probes(x, y, objective, "saebench-0.6", seed=seed)
        assert stacked.steps == alone.steps == 4 * 3
        assert torch.equal(stacked.weight, alone.weight)
        assert torch.equal(stacked.bias, alone.bias)
        assert torch.equal(stacked.data_gradient, alone.data_gradient)


def _split_words(n_train: int, n_test: int, seed: int) -> SplitWords:
    """A split of 182 words (word i of letter i mod 26) into n_train and n_test words."""
    x, _ = _problem(n_train + n_test, 26, seed)
    order = torch.randperm(n_train + n_test, generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train].sort().values, order[n_train:].sort().values
    return SplitWords(train, test, x, x[test])


def test_letter_probes_trained_together_are_each_splits_own():
    # Two splits of one size are stacked; the third, of another size, trains in a group of its own.
    datas = [_split_words(130, 52, 0), _split_words(130, 52, 1), _split_words(156, 26, 2)]
    labels = torch.arange(182) % 26
    seeds = [5, 6, 7]
    together = fit_letter_probes_together(datas, labels, seeds=seeds)
    for data, seed, stacked in zip(datas, seeds, together, strict=True):
        alone = fit_letter_probes(data, labels, "saebench-0.6", seed=seed)
        assert torch.equal(stacked.weight, alone.weight)
        assert torch.equal(stacked.bias, alone.bias)
        torch.testing.assert_close(stacked.f1, alone.f1, rtol=0, atol=0, equal_nan=True)
        scored = alone.f1[torch.isfinite(alone.f1)]  # NaN: a letter without test words
        assert len(scored) >= 10 and (scored > 0).sum() >= 10  # trained probes that find their letters
