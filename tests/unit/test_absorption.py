"""Absorption on planted data: activations built from known letter directions, an SAE with hand-set
weights whose main latent per letter and absorbing latents are planted, so the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from saehealth.absorption import cache
from saehealth.absorption.cache import SplitWords
from saehealth.absorption.measure import AbsorptionSettings, absorption_applicable, score_splits, train_letter_probes
from saehealth.absorption.scoring import token_absorption

D_IN = 64
N_ABSORBERS = 20  # each absorbs a handful of A-words, like a token-specific latent ("short" for S)
LETTER_SCALE, ABSORBED_SCALE, NOISE = 2.0, 3.0, 0.05
A = 0


def _directions(seed: int = 0) -> np.ndarray:
    """Orthonormal rows: 26 letter directions, then one direction per absorbing token feature."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D_IN, D_IN)))
    return q.T[: 26 + N_ABSORBERS].astype(np.float32)


def _split(n: int, seed: int = 2):
    order = np.random.default_rng(seed).permutation(n)
    n_test = n // 5
    return order[n_test:], order[:n_test]


def _planted_words(absorbed_share: float, letters: int = 26, words_of_a: int = 400, words_per_letter: int = 60):
    """(activations, labels, absorber id per word or -1, train rows, test rows).

    Every (1/share)-th A-word of each split is absorbed, so the share holds on the held-out words too.
    """
    rng = np.random.default_rng(1)
    dirs = _directions()
    labels = np.concatenate([np.full(words_of_a, A)] + [np.full(words_per_letter, i) for i in range(1, letters)])
    train, test = _split(len(labels))
    absorber = np.full(len(labels), -1)
    if absorbed_share > 0:
        step = round(1 / absorbed_share)
        for rows in (train, test):
            absorbed = rows[labels[rows] == A][::step]
            absorber[absorbed] = np.arange(len(absorbed)) % N_ABSORBERS
    acts = LETTER_SCALE * dirs[labels] + NOISE * rng.normal(size=(len(labels), D_IN)).astype(np.float32)
    has = absorber >= 0
    acts[has] += ABSORBED_SCALE * dirs[26 + absorber[has]]
    return acts.astype(np.float32), labels, absorber, train, test


def _planted_sae(with_absorbers: bool) -> StandardSAE:
    """Latent i < 26 is letter i's main latent; latents 26.. absorb A on their token's words.

    A's main latent is pushed below zero by each absorbing feature, so on absorbed words it is silent
    and the absorber, whose decoder row points at A's direction plus its token's, carries A instead.
    """
    dirs = torch.from_numpy(_directions())
    d_sae = 26 + N_ABSORBERS + 18  # plus distractors that almost never fire
    gen = torch.Generator().manual_seed(3)
    w_enc = torch.nn.functional.normalize(torch.randn(D_IN, d_sae, generator=gen), dim=0)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, D_IN, generator=gen), dim=1)
    b_enc = torch.full((d_sae,), -1.8)
    w_enc[:, :26] = dirs[:26].T
    w_dec[:26] = dirs[:26]
    b_enc[:26] = -0.5
    if with_absorbers:
        token_dirs = dirs[26:]
        w_enc[:, 0] -= token_dirs.sum(0)
        w_enc[:, 26 : 26 + N_ABSORBERS] = token_dirs.T
        w_dec[26 : 26 + N_ABSORBERS] = torch.nn.functional.normalize(
            LETTER_SCALE * dirs[A] + ABSORBED_SCALE * token_dirs, dim=1
        )
        b_enc[26 : 26 + N_ABSORBERS] = -0.5
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=d_sae, apply_b_dec_to_input=False))
    sae.load_state_dict({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": torch.zeros(D_IN)})
    return sae


def _score(acts, labels, train, test, sae, min_letters: int = 20, schedule: str = "converged"):
    """Absorption on one given word split; the absorption step reads the same activations as the probes."""
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    data = SplitWords(train, test, torch.as_tensor(acts), torch.as_tensor(acts)[test])
    labels = torch.as_tensor(labels)
    probes = train_letter_probes(data, labels, schedule, seed=0)
    settings = AbsorptionSettings(schedule=schedule, n_splits=1, min_letters=min_letters)
    return data, probes, score_splits(labels, [data], [probes], sae, settings=settings)


@pytest.fixture(scope="module")
def absorbed():
    """A quarter of the A-words absorbed: (word data, probes, test rows, absorber per word, SAE, result)."""
    acts, labels, absorber, train, test = _planted_words(0.25)
    sae = _planted_sae(with_absorbers=True)
    data, probes, result = _score(acts, labels, train, test, sae)
    return data, probes, torch.as_tensor(labels), absorber, sae, result


def _true_positives(data, probes, labels, letter):
    """Positions in the test words (and rows of absorption_acts) of the letter's probe true positives."""
    scores = data.probe_acts[data.test] @ probes.weight.T + probes.bias
    return torch.nonzero((labels[data.test] == letter) & (scores[:, letter] > 0)).flatten()


def test_planted_absorption_fraction_is_recovered(absorbed):
    data, probes, labels, _, _, result = absorbed

    assert result.not_measured_reason is None
    assert result.metrics["absorption_letters_scored"] == 26
    tp_rows = _true_positives(data, probes, labels, A)
    assert len(tp_rows) == int((labels[data.test] == A).sum())  # the probe finds every held-out A-word
    assert result.per_letter["absorption_fraction"][A] == pytest.approx(0.25, abs=0.05)
    # Only A has absorbers, so the other letters score ~0 and the mean is A's share over 26 letters.
    others = np.delete(result.per_letter["absorption_fraction"], A)
    assert others.max() < 0.02
    assert result.metrics["absorption_fraction"] == pytest.approx(0.25 / 26, abs=0.005)
    # k-sparse probing finds exactly the planted main latent for every letter.
    assert result.per_letter["main_latents"][:, 0].tolist() == list(range(26))
    assert result.metrics["mean_num_split_features"] == 1.0


def test_full_absorption_counts_exactly_the_words_where_the_main_latent_is_silent(absorbed):
    data, probes, labels, absorber, sae, result = absorbed

    tp_rows = _true_positives(data, probes, labels, A)
    with torch.no_grad():
        main_act = sae.encode(data.absorption_acts[tp_rows])[:, A]
    silent = int((main_act == 0).sum())
    assert silent == int((absorber[data.test[tp_rows].numpy()] >= 0).sum()) > 0
    assert result.per_letter["num_full_absorption"][A] == silent
    assert result.per_letter["full_absorption_rate"][A] == pytest.approx(silent / len(tp_rows))
    assert np.nansum(np.delete(result.per_letter["num_full_absorption"], A)) == 0


def test_no_absorber_means_no_absorption():
    acts, labels, _, train, test = _planted_words(0.0)
    _, _, result = _score(acts, labels, train, test, _planted_sae(with_absorbers=False))

    assert result.metrics["absorption_fraction"] == pytest.approx(0.0, abs=0.005)
    assert result.metrics["full_absorption_rate"] == 0.0
    assert result.per_letter["absorption_fraction"][A] < 0.01


def test_too_few_letters_is_not_measured_with_the_count():
    # 12 letters are planted; the other 14 have words but no direction, so their probes fail.
    acts, labels, _, train, test = _planted_words(0.0, letters=26)
    noise_only = labels >= 12
    acts[noise_only] = NOISE * np.random.default_rng(5).normal(size=(int(noise_only.sum()), D_IN))
    _, _, result = _score(acts, labels, train, test, _planted_sae(with_absorbers=False), min_letters=20)

    assert result.metrics["absorption_fraction"] is None
    assert result.metrics["full_absorption_rate"] is None
    assert result.metrics["absorption_letters_scored"] == 12
    assert result.not_measured_reason == (
        "only 12 letters had probe F1 > 0.6 (minimum 20, converged probes: lower it with --absorption-min-letters)"
    )
    assert np.isnan(result.per_letter["absorption_fraction"]).all()
    assert (result.per_letter["probe_f1"][:12] > 0.6).all()


def _one_token(main_act: float, absorber_acts: list[float], absorber_cos: list[float], total: float):
    """A single token whose probe projection is `total`, with a main latent along the probe."""
    d_sae = 1 + len(absorber_acts)
    latents = torch.tensor([[main_act, *absorber_acts]])
    cos = torch.tensor([1.0, *absorber_cos])
    probe = torch.tensor([1.0, 0.0])
    sae_in = torch.tensor([[total, 5.0]])
    assert latents.shape[1] == d_sae
    return token_absorption(sae_in, latents, probe, cos, [0])


@pytest.mark.parametrize(
    ("main_act", "absorbers", "cos", "total", "fraction", "full"),
    [
        (1.0, [], [], 1.0, 0.0, False),  # the main latent carries everything
        (0.6, [0.9], [0.5], 1.0, 0.4, False),  # absorber projects 0.45, capped at P - M = 0.4: 0.4 / (0.4 + 0.6)
        (0.7, [0.3 / 0.5], [0.5], 1.0, 0.0, False),  # absorber below 40% of the projection: not counted
        (0.0, [0.8], [0.9], 1.0, 1.0, True),  # main silent, one absorber carries 72%: full absorption
        (0.0, [0.3, 0.3], [0.9, 0.9], 1.0, 1.0, False),  # absorbed, but no single latent carries 40%
        (0.5, [2.0], [0.05], 1.0, 0.0, False),  # a latent barely aligned with the probe is no absorber
        (0.2, [0.5] * 4, [0.8] * 4, 2.0, 1.2 / 1.4, False),  # only the top 3 absorbers count: 3 x 0.4
        (0.0, [0.8], [0.9], -1.0, 0.0, False),  # the probe does not fire: never absorption
    ],
)
def test_token_absorption_formula(main_act, absorbers, cos, total, fraction, full):
    got_fraction, got_full = _one_token(main_act, absorbers, cos, total)
    assert got_fraction.item() == pytest.approx(fraction, abs=1e-6)
    assert bool(got_full.item()) is full


def test_absorption_applies_to_residual_stream_hooks_only():
    assert absorption_applicable("blocks.0.hook_resid_post") is None
    assert absorption_applicable("blocks.11.hook_resid_pre") is None
    assert absorption_applicable("blocks.3.hook_resid_mid") is None
    reason = absorption_applicable("blocks.0.attn.hook_z")
    assert reason is not None and "residual-stream" in reason and "blocks.0.attn.hook_z" in reason
    assert absorption_applicable("blocks.0.hook_mlp_out") is not None


def _tiny_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from saehealth.builtin import load_builtin_tokenizer

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=32, d_head=8, n_heads=2, d_vocab=4096, act_fn="relu")
    return HookedTransformer(cfg, tokenizer=load_builtin_tokenizer())


TRAIN, TEST = torch.arange(32), torch.arange(32, 40)


def _tiny_words() -> SplitWords:
    gen = torch.Generator().manual_seed(0)
    return SplitWords(TRAIN, TEST, torch.randn(40, 16, generator=gen), torch.randn(8, 16, generator=gen))


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model()


def _words_entry(store_folder, model, build_count):
    notes: list[str] = []
    store = cache.Store(store_folder, model, "blocks.0.hook_resid_post", 42, notes)

    def build():
        build_count.append(1)
        return _tiny_words()

    return store.fetch("words", 0, {}, lambda path: cache.read_words(path, TRAIN, TEST, 16), build), notes


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable safetensors"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "not a readable safetensors"),
        (lambda p: _rewrite(p, drop="absorption_acts"), "no absorption_acts"),
        (lambda p: _rewrite(p, reshape="probe_acts"), "probe_acts is"),
        (lambda p: _rewrite(p, nan="probe_acts"), "not finite"),
    ],
    ids=["truncated", "garbage", "incomplete", "wrong-shaped", "not-finite"],
)
def test_a_bad_cache_entry_is_rebuilt_with_a_note_and_healed(tmp_path, tiny_model, damage, problem):
    built: list[int] = []
    first, notes = _words_entry(tmp_path, tiny_model, built)
    assert len(built) == 1 and not notes
    entry = next(tmp_path.glob("absorption-words-*.safetensors"))
    damage(entry)

    again, notes = _words_entry(tmp_path, tiny_model, built)
    assert len(built) == 2  # rebuilt, not crashed
    assert len(notes) == 1 and problem in notes[0] and "rebuilt" in notes[0]
    torch.testing.assert_close(again.probe_acts, first.probe_acts)

    healed, notes = _words_entry(tmp_path, tiny_model, built)
    assert len(built) == 2 and not notes  # the rewritten entry is read back
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left


def test_a_cache_folder_that_is_a_file_runs_without_caching(tmp_path, tiny_model):
    folder = tmp_path / "cache"
    folder.write_text("not a folder")
    built: list[int] = []
    data, notes = _words_entry(folder, tiny_model, built)
    assert len(built) == 1 and len(data.probe_acts) == 40
    assert len(notes) == 1 and "Could not write the absorption cache" in notes[0] and "ran without it" in notes[0]


def _rewrite(path, drop=None, reshape=None, nan=None):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][:, :-1].contiguous()
    if nan:
        tensors[nan][0, 0] = float("nan")
    save_file(tensors, str(path))


def test_cache_entry_names_change_with_the_model_weights_hook_seed_and_split(tiny_model):
    key = cache.model_fingerprint(tiny_model)
    stem = cache.entry_stem("words", key, "blocks.0.hook_resid_post", 42, 0)
    assert cache.entry_stem("words", key, "blocks.0.hook_resid_post", 42, 0) == stem
    assert cache.entry_stem("words", key, "blocks.0.hook_resid_pre", 42, 0) != stem
    assert cache.entry_stem("words", key, "blocks.0.hook_resid_post", 7, 0) != stem
    assert cache.entry_stem("words", key, "blocks.0.hook_resid_post", 42, 1) != stem
    assert cache.entry_stem("probes", key, "blocks.0.hook_resid_post", 42, 0, {"schedule": "converged"}) != (
        cache.entry_stem("probes", key, "blocks.0.hook_resid_post", 42, 0, {"schedule": "saebench-0.6"})
    )
    with torch.no_grad():
        tiny_model.blocks[0].mlp.W_out[3, 5] += 1e-3  # one weight of one layer
    assert cache.model_fingerprint(tiny_model) != key


def test_the_cli_offers_exactly_the_probe_schedules():
    from saehealth.absorption import SCHEDULES
    from saehealth.config import ABSORPTION_PROBES, EvalConfig
    from saehealth.errors import ConfigError

    assert ABSORPTION_PROBES == SCHEDULES
    assert EvalConfig(sae_path="x", absorption_probes="saebench-0.6").absorption_probes == "saebench-0.6"
    with pytest.raises(ConfigError, match="Unknown --absorption-probes 'saebench'") as error:
        EvalConfig(sae_path="x", absorption_probes="saebench")
    assert "\n" not in str(error.value)


def test_a_saebench_schedule_headline_is_also_saebenchs_estimator():
    acts, labels, _, train, test = _planted_words(0.25)
    _, _, result = _score(acts, labels, train, test, _planted_sae(with_absorbers=True), schedule="saebench-0.6")

    assert result.schedule == "saebench-0.6"
    assert result.metrics["absorption_fraction_saebench"] == result.metrics["absorption_fraction"] is not None
    # One set of per-letter arrays (the details file refuses two names for one array).
    assert not [name for name in result.per_letter if name.startswith("saebench_")]


def test_without_saebenchs_schedule_its_estimator_is_not_measured_with_the_reason(absorbed):
    *_, result = absorbed
    assert result.metrics["absorption_fraction_saebench"] is None
    assert result.not_measured["absorption_fraction_saebench"] == "the saebench-0.6 probe schedule was not run"
