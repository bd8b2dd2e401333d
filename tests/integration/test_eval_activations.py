"""`saehealth eval/compare --activations`: minSAE and SAELens caches of the built-in model score exactly as the
replay does on the same tokens; what needs the model is not measured, and bad caches are refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saehealth
from saehealth.activations.resolve import DOWNSTREAM_NOT_MEASURED
from saehealth.cli import main
from saehealth.loading import load_checkpoint
from saehealth.replay import splice_site
from saehealth.result import RECONSTRUCTION_KEYS, SPARSITY_KEYS, load_details
from saehealth.scoring import score_batches
from tests.conftest import random_sae
from tests.integration.cache_writers import write_minsae_cache, write_saelens_cache

RESID, MLP_OUT = "blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"
COMPARED = RECONSTRUCTION_KEYS + SPARSITY_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _minsae_sae(path, sae_type="topk", d_sae=256, seed=0):
    """A minSAE checkpoint (best_sae.pt) of layer 0 of the built-in model, random weights."""
    torch.manual_seed(seed)
    encoder, decoder = torch.nn.Linear(128, d_sae), torch.nn.Linear(d_sae, 128)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    config = {
        "model_name": saehealth.BUILTIN_MODEL,
        "layer_idx": 0,
        "d_hidden": d_sae,
        "sae_type": sae_type,
        "topk": 16,
    }
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state, "config": config}, path / "best_sae.pt")
    return path


def _resid_sae(path, seed=1):
    """A SAELens standard SAE at blocks.0.hook_resid_post with random weights."""
    return random_sae(path, hook_name=RESID, d_sae=384, seed=seed, bias=-0.6)


@pytest.fixture(scope="module")
def minsae_cache(tmp_path_factory, builtin_model):
    folder = tmp_path_factory.mktemp("minsae") / "cache"
    # Shards of 16 sequences, the batch size: the cache's batches are the replay's (the first batch's mean is
    # the reference the per-sequence variance totals are taken about, so standard errors compare exactly).
    tokens = write_minsae_cache(builtin_model, 0, folder, shard_size=16)
    return folder, tokens


@pytest.fixture(scope="module")
def saelens_cache(tmp_path_factory, builtin_model):
    folder = tmp_path_factory.mktemp("saelens") / "cache"
    dataset = write_saelens_cache(builtin_model, RESID, folder)
    return folder, dataset.with_format("torch")[:]["token_ids"].long()


def _replay(model, sae_path, hook, tokens, include_special_tokens):
    loaded = load_checkpoint(str(sae_path))
    batches = [tokens[i : i + 16] for i in range(0, len(tokens), 16)]
    (output,) = score_batches(model, [(splice_site(hook), loaded.sae)], batches, include_special_tokens)
    return output


def _assert_same_as_replay(result, replay, details):
    for key in COMPARED:
        assert result.metrics[key] == pytest.approx(replay.metrics[key], rel=1e-6, abs=1e-6), key
    for key in ("explained_variance", "l0"):  # same sequences, so the same standard errors
        assert result.uncertainty[key] == pytest.approx(replay.uncertainty[key], rel=1e-6), key
    assert result.eval.tokens_scored == replay.tokens_scored and result.eval.n_sequences == replay.n_sequences
    assert torch.equal(details["firing_counts"], replay.details["firing_counts"])


def test_minsae_cache_scores_as_the_replay(tmp_path, minsae_cache, builtin_model):
    folder, tokens = minsae_cache
    sae = _minsae_sae(tmp_path / "sae")
    out = tmp_path / "out"
    result = saehealth.evaluate(str(sae), activations=str(folder), out=out)
    # minSAE keeps no token ids, so nothing can be masked: the replay scores every position too.
    _assert_same_as_replay(result, _replay(builtin_model, sae, MLP_OUT, tokens, True), load_details(out))
    assert result.eval.activations == "minsae" and result.eval.mask_special_tokens is False
    assert result.eval.dataset == str(folder / "validation") and result.eval.context_length == 128
    assert result.metrics["loss_recovered"] is None
    assert result.not_measured["loss_recovered"] == DOWNSTREAM_NOT_MEASURED
    assert result.verdicts["loss_recovered"]["status"] == "not measured"
    assert "residual-stream" in result.not_measured["absorption_fraction"]  # an MLP-output hook
    notes = " ".join(result.notes)
    assert "each block of 128 consecutive tokens as a sequence" in notes and "no token ids" in notes


def test_saelens_cache_scores_as_the_replay(tmp_path, saelens_cache, builtin_model):
    folder, tokens = saelens_cache
    sae = _resid_sae(tmp_path / "sae")
    out = tmp_path / "out"
    result = saehealth.evaluate(str(sae), activations=str(folder), out=out)
    # The cache keeps token ids: BOS/EOS/PAD are masked with the model's tokenizer, as in the replay.
    _assert_same_as_replay(result, _replay(builtin_model, sae, RESID, tokens, False), load_details(out))
    assert result.eval.activations == "saelens" and result.eval.mask_special_tokens is True
    assert result.eval.tokens_scored < result.eval.n_tokens
    assert "absorption prompts the model" in result.not_measured["absorption_fraction"]
    assert result.saebench_core["kl_div_score"] is None and result.saebench_core["explained_variance"] is not None


def test_absorption_prompts_the_model_given_with_a_cache(tmp_path, saelens_cache, monkeypatch):
    from saehealth import absorption
    from saehealth.absorption.measure import AbsorptionResult

    seen = {}

    def fake_absorption(model, sae, hook_name, **options):
        seen.update(model=model, hook=hook_name)
        keys = absorption.METRIC_KEYS
        return AbsorptionResult(
            dict.fromkeys(keys), {}, dict.fromkeys(keys, "canned in this test"), {}, [], "converged"
        )

    monkeypatch.setattr(absorption, "measure_absorption", fake_absorption)
    result = saehealth.evaluate(
        str(_resid_sae(tmp_path / "sae")),
        activations=str(saelens_cache[0]),
        model=saehealth.BUILTIN_MODEL,
        out=tmp_path / "out",
    )
    assert seen["hook"] == RESID and seen["model"].cfg.d_model == 128
    assert result.not_measured["absorption_fraction"] == "canned in this test"
    assert result.metrics["loss_recovered"] is None  # a model given for absorption does not make a replay


def test_compare_scores_every_sae_in_one_read(tmp_path, minsae_cache):
    from saehealth.compare import compare

    folder, _ = minsae_cache
    paths = [str(_minsae_sae(tmp_path / name, sae_type, seed=i)) for i, (name, sae_type) in enumerate(
        [("relu_sae", "relu"), ("topk_sae", "topk")])]  # fmt: skip
    comparison = compare(paths, activations=str(folder), out=tmp_path / "cmp")
    alone = saehealth.evaluate(paths[1], activations=str(folder), out=tmp_path / "alone")
    assert [e.name for e in comparison.entries] == ["relu_sae", "topk_sae"]
    for key in COMPARED:
        assert comparison.entries[1].result.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-9), key
    assert comparison.settings["dataset"] == str(folder / "validation") and comparison.identical_tokens
    assert all(e.result.verdicts["loss_recovered"]["status"] == "not measured" for e in comparison.entries)


def test_plain_tensor_files_score_as_the_replay(tmp_path, minsae_cache, builtin_model):
    """The same activations as one (sequences, pos, d_in) file and as a flat (tokens, d_in) one cut into blocks
    of --context-length; half-precision copies are upcast as they are read."""
    from safetensors.torch import load_file

    folder, tokens = minsae_cache
    sae = _minsae_sae(tmp_path / "sae")
    replay = _replay(builtin_model, sae, MLP_OUT, tokens, True)
    acts = torch.cat([load_file(str(p))["activations"] for p in sorted((folder / "validation").glob("shard_*"))])
    np.save(tmp_path / "by_sequence.npy", acts.reshape(-1, 128, 128).numpy())
    save_file({"activations": acts}, str(tmp_path / "flat.safetensors"))
    for name, extra in (("by_sequence.npy", {}), ("flat.safetensors", {"context_length": 128})):
        out = tmp_path / f"out_{name}"
        result = saehealth.evaluate(str(sae), activations=str(tmp_path / name), out=out, **extra)
        _assert_same_as_replay(result, replay, load_details(out))
        assert result.eval.activations == "tensor"
    for dtype in (torch.float16, torch.bfloat16):
        path = tmp_path / f"acts_{dtype}.safetensors"
        save_file({"activations": acts.reshape(-1, 128, 128).to(dtype)}, str(path))
        half = saehealth.evaluate(str(sae), activations=str(path), hook=MLP_OUT, out=tmp_path / str(dtype))
        assert half.metrics["explained_variance"] == pytest.approx(replay.metrics["explained_variance"], abs=2e-2)
        assert half.eval.n_tokens == replay.tokens_run
        assert f"{str(dtype).removeprefix('torch.')} activations, read as float32" in " ".join(half.notes)


# ---------------------------------------------------------------------------------------------- refusals
def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *args])
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("make_cache", "sae_kind", "message"),
    [
        (lambda p: np.save(p / "narrow.npy", np.zeros((4, 128, 64), np.float32)), "minsae", "64 wide"),
        (lambda p: None, "resid", f"holds {MLP_OUT} activations but the SAE reads {RESID}"),
        ("nan", "minsae", "NaN or Inf"),
        (lambda p: np.save(p / "ints.npy", np.zeros((4, 128, 128), np.int8)), "minsae", "int8 activations"),
    ],
)
def test_bad_caches_are_one_line_errors_with_nothing_written(
    tmp_path, capsys, minsae_cache, make_cache, sae_kind, message
):
    folder, _ = minsae_cache
    cache = folder
    if make_cache == "nan":
        acts = np.random.default_rng(0).normal(size=(40, 128, 128)).astype(np.float32)
        acts[37, 5, 3] = np.inf  # in the last batch: found while streaming, after earlier batches were scored
        np.save(tmp_path / "nan.npy", acts)
        cache = tmp_path / "nan.npy"
    elif make_cache(tmp_path) is None and sae_kind == "minsae":
        cache = next(tmp_path.glob("*.npy"))
    sae = _minsae_sae(tmp_path / "sae") if sae_kind == "minsae" else _resid_sae(tmp_path / "sae")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(sae), "--activations", str(cache), "--hook", MLP_OUT if sae_kind == "minsae" else RESID, "--out", str(out)], capsys)  # fmt: skip
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert message in err, err
    assert not out.exists()


def test_options_that_contradict_a_cache(tmp_path, capsys, minsae_cache):
    sae, cache = str(_minsae_sae(tmp_path / "sae")), str(minsae_cache[0])
    for extra, message in (
        (["--saebench-out", str(tmp_path / "sb")], "requires loss and KL"),
        (["--dataset", saehealth.BUILTIN_DATASET], "give one of them"),
        (["--context-length", "64"], "differs from the cache's sequences of 128 tokens"),
    ):
        code, err = _run(["--sae-path", sae, "--activations", cache, "--out", str(tmp_path / "out"), *extra], capsys)
        assert code == 1 and message in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "sb").exists()
