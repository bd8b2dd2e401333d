"""`saehealth compare` on the built-in model: SAEs written by SAELens, sparsify, dictionary_learning and in the
Gemma Scope layout, side by side on identical tokens, each equal to its own `evaluate()`."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import saehealth
from saehealth import compare as compare_module
from saehealth.cli import main
from saehealth.compare import compare
from saehealth.comparison import pareto_front
from saehealth.evaluation import evaluate
from saehealth.member_names import checkpoint_paths, unique_names
from saehealth.output import MANIFEST
from saehealth.result import METRIC_KEYS, load_result
from tests.conftest import shifted_identity_sae, write_standard_sae

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

TOKENS = 2048  # 16 sequences of 128
RESID = "blocks.0.hook_resid_post"
MLP_OUT = "blocks.1.hook_mlp_out"
D_IN, D_SAE = 128, 256
COMMON = ["--tokens", str(TOKENS), "--skip", "absorption"]


def _random_standard_sae(folder, *, hook_name=RESID, model_name=None, context_size=None, seed=0):
    """A SAELens StandardSAE with tied, unit-norm random weights and negative biases: sparse, imperfect."""
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return write_standard_sae(
        folder,
        W_dec.T.contiguous(),
        torch.full((D_SAE,), -0.5),
        W_dec,
        torch.zeros(D_IN),
        hook_name=hook_name,
        model_name=model_name,
        context_size=context_size,
    )


def _sparsify_run(root):
    """Two TopK SparseCoders (layers.0, layers.1) saved the way sparsify's trainer writes a run folder, with the
    run's config.json naming our model."""
    sparsify = pytest.importorskip("sparsify")
    hookpoints = ["layers.0", "layers.1"]
    for hookpoint in hookpoints:
        coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(expansion_factor=2, k=16))
        coder.save_to_disk(root / hookpoint)
    run = sparsify.TrainConfig(coder.cfg, hookpoints=hookpoints).to_dict()
    run.update(model=saehealth.BUILTIN_MODEL, dataset=saehealth.BUILTIN_DATASET, ctx_len=128)
    (root / "config.json").write_text(json.dumps(run))
    return root


def _dictionary_learning_checkpoint(root):
    """A TopK autoencoder saved as dictionary_learning's training loop does (config.json + ae.pt)."""
    if "nnsight" not in sys.modules:
        try:
            import nnsight  # noqa: F401
        except ImportError:  # its package __init__ imports nnsight, which the dictionary classes never use
            stub = types.ModuleType("nnsight")
            stub.LanguageModel = object
            sys.modules["nnsight"] = stub
    trainers = pytest.importorskip("dictionary_learning.trainers.top_k")
    trainer = trainers.TopKTrainer(
        steps=5000,
        activation_dim=D_IN,
        dict_size=D_SAE,
        k=16,
        layer=0,
        lm_name=saehealth.BUILTIN_MODEL,
        device="cpu",
        submodule_name="resid_post_layer_0",
    )
    folder = root / "trainer_0"
    folder.mkdir(parents=True)
    config = {"trainer": trainer.config, "buffer": {"d_submodule": D_IN, "io": "out", "ctx_len": 128}}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({k: v.cpu() for k, v in trainer.ae.state_dict().items()}, folder / "ae.pt")
    return folder


def _gemma_scope_params(root):
    """params.npz in the Gemma Scope layout (JumpReLU); the layout names layer 0 of gemma-2-2b."""
    folder = root / "gemma-scope-2b-pt-res" / "layer_0" / "width_16k" / "average_l0_30"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((D_SAE, D_IN)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    params = {
        "W_enc": W_dec.T.copy(),
        "W_dec": W_dec,
        "b_enc": np.zeros(D_SAE, np.float32),
        "b_dec": np.zeros(D_IN, np.float32),
        "threshold": np.full(D_SAE, 0.5, np.float32),
    }
    np.savez(folder / "params.npz", **params)
    return folder / "params.npz"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(root, {name: path of that SAE alone}, paths to give compare): six SAEs from four libraries, four at the
    middle residual stream, one at the last and one at an MLP output; the sparsify run folder holds two."""
    root = tmp_path_factory.mktemp("checkpoints")
    run = _sparsify_run(root / "sparsify_run")
    paths = {
        "sparsify_run-layers.0": run / "layers.0",
        "sparsify_run-layers.1": run / "layers.1",
        "average_l0_30": _gemma_scope_params(root),
        "sweep_1": _random_standard_sae(root / "sweep_1", seed=1),
        "sweep_10": shifted_identity_sae(root / "sweep_10", D_IN, hook_name=MLP_OUT, n_dead=8),
    }
    inputs = [run, paths["average_l0_30"]]
    try:
        paths["dl_sweep-trainer_0"] = _dictionary_learning_checkpoint(root / "dl_sweep")
        inputs.append(paths["dl_sweep-trainer_0"])
    except pytest.skip.Exception:
        pass
    return root, paths, inputs


@pytest.fixture(scope="module")
def compared(checkpoints, tmp_path_factory):
    """One CLI comparison of all of them; counts the shared passes."""
    root, paths, inputs = checkpoints
    out = tmp_path_factory.mktemp("comparison")
    calls = []
    real = compare_module.score_batches

    def counting(model, members, *args, **kwargs):
        calls.append(sorted(site.hook_name for site, _ in members))
        return real(model, members, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare_module, "score_batches", counting)
        # The Gemma Scope layout names gemma-2-2b: --model puts every SAE on the built-in model.
        args = ["compare", *map(str, inputs), "--sweep", str(root / "sweep_*"), "--model", saehealth.BUILTIN_MODEL]
        main([*args, *COMMON, "--out", str(out)])
    return out, paths, calls


def test_every_sae_is_scored_on_identical_tokens_in_one_pass(compared, capsys):
    out, paths, calls = compared
    summary = json.loads((out / "comparison.json").read_text())
    names = [row["name"] for row in summary["saes"]]
    assert set(names) == set(paths)
    assert names[-2:] == ["sweep_1", "sweep_10"]  # paths first, then glob matches in natural order
    assert summary["identical_tokens"] is True
    results = {name: load_result(out / name) for name in names}
    assert {r.eval.n_tokens for r in results.values()} == {TOKENS}
    assert (
        len({(r.eval.tokens_scored, r.eval.n_sequences, r.eval.dataset, r.eval.split) for r in results.values()}) == 1
    )
    # Every SAE, whatever its hook, is scored in one pass.
    assert calls == [sorted([RESID] * (len(paths) - 2) + ["blocks.1.hook_resid_post", MLP_OUT])]
    libraries = {row["name"]: row["library"] for row in summary["saes"]}
    expected = {"sparsify_run-layers.1": "sparsify", "average_l0_30": "gemma_scope", "sweep_1": "sae_lens"}
    assert {name: libraries[name] for name in expected} == expected
    assert libraries.get("dl_sweep-trainer_0", "dictionary_learning") == "dictionary_learning"
    perfect = next(row for row in summary["saes"] if row["name"] == "sweep_10")
    assert perfect["hook"] == MLP_OUT
    assert perfect["metrics"]["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["on_frontier"] is True  # nothing recovers more loss
    assert all(row["metrics"]["absorption_fraction"] is None for row in summary["saes"])


def test_files_of_the_comparison_and_of_each_sae(compared):
    out, paths, _ = compared
    markdown = (out / "comparison.md").read_text()
    html = (out / "comparison.html").read_text()
    for name in paths:
        assert (out / name / "result.json").is_file()
        assert (out / name / "result.details.safetensors").is_file()
        assert (out / name / "report.md").is_file()
        assert (out / name / "report.html").is_file() and (out / name / "result.latents.safetensors").is_file()
        assert f"]({name}/report.md)" in markdown
        assert f'<a href="{name}/report.html">{name}</a>' in html
    assert html.count("data:image/png;base64,") == 3  # both frontier plots and the differences inline
    for png in ("frontier_l0_loss_recovered.png", "frontier_l0_explained_variance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in markdown
    assert "| architecture | hook | d_sae |" in markdown  # SAEs at two hooks: the table shows each one's
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MANIFEST]  # no temporary files left behind


def test_each_result_equals_evaluate_alone(compared, tmp_path):
    out, paths, _ = compared
    for name, path in paths.items():
        alone = evaluate(
            path, model=saehealth.BUILTIN_MODEL, n_tokens=TOKENS, skip=("absorption",), out=tmp_path / name
        )
        together = load_result(out / name)
        assert together.eval == alone.eval
        assert together.sae.hook_name == alone.sae.hook_name
        for key in METRIC_KEYS:
            a, b = together.metrics[key], alone.metrics[key]
            assert (a is None) == (b is None), key
            if a is not None:
                assert a == pytest.approx(b, rel=1e-5, abs=1e-7), (name, key)
        assert {k: v["status"] for k, v in together.verdicts.items()} == {
            k: v["status"] for k, v in alone.verdicts.items()
        }


def test_saved_results_are_reused_unless_forced(compared, capsys):
    out, paths, _ = compared
    before = {name: (out / name / "result.json").stat().st_mtime_ns for name in paths}
    args = [str(p) for p in paths.values()]
    again = compare(args, model=saehealth.BUILTIN_MODEL, n_tokens=TOKENS, skip=("absorption",), out=out)
    assert all(entry.reused for entry in again.entries)
    assert {name: (out / name / "result.json").stat().st_mtime_ns for name in paths} == before
    with pytest.raises(SystemExit) as exc:
        main(["compare", *args, "--model", saehealth.BUILTIN_MODEL, "--tokens", "1024", "--out", str(out)])
    assert exc.value.code == 1
    assert "--force" in capsys.readouterr().err


def test_json_output_and_strict_exit_code(compared, capsys):
    from saehealth.verdicts import is_unhealthy

    out, paths, _ = compared
    argv = ["compare", *map(str, paths.values()), "--model", saehealth.BUILTIN_MODEL, *COMMON, "--out", str(out)]
    capsys.readouterr()
    main([*argv, "--json"])  # saved results are reused: no pass runs
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "comparison.json").read_text())
    assert {row["name"] for row in printed["saes"]} == set(paths)
    assert any(is_unhealthy(load_result(out / name).verdicts) for name in paths)  # random SAEs are among them
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--quiet", "--strict"])
    assert exc.value.code == 2


def test_each_sae_becomes_a_wandb_run(compared, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, paths, _ = compared
    two = [str(paths["sweep_1"]), str(paths["sweep_10"])]
    capsys.readouterr()
    main(["compare", *two, "--model", saehealth.BUILTIN_MODEL, *COMMON, "--out", str(out), "--json", "--wandb", "p"])
    logged = json.loads(capsys.readouterr().out)["wandb"]
    assert sorted(logged) == ["sweep_1", "sweep_10"]
    for location in logged.values():
        assert list(Path(location).glob("run-*.wandb")) and Path(location).is_relative_to(tmp_path / "wb")


def test_num_samples_sets_the_sequences_of_every_sae(tmp_path):
    a, b = _random_standard_sae(tmp_path / "a", seed=3), _random_standard_sae(tmp_path / "b", seed=4)
    main(["compare", str(a), str(b), "--num-samples", "6", "--skip", "absorption", "--out", str(tmp_path / "o")])
    for name in ("a", "b"):
        result = load_result(tmp_path / "o" / name)
        assert (result.eval.n_sequences, result.eval.n_tokens) == (6, 6 * 128)


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert "Nothing to compare" in _one_line_error(capsys, ["compare"])
    assert "matches no file" in _one_line_error(capsys, ["compare", "--sweep", str(tmp_path / "nothing_*")])
    ours = _random_standard_sae(tmp_path / "ours")
    theirs = _random_standard_sae(tmp_path / "theirs", model_name="gpt2")
    err = _one_line_error(capsys, ["compare", str(ours), str(theirs), *COMMON, "--out", str(tmp_path / "o")])
    assert "different models" in err and "gpt2" in err and "--model" in err
    short = _random_standard_sae(tmp_path / "short", context_size=32)
    long = _random_standard_sae(tmp_path / "long", context_size=64)
    err = _one_line_error(capsys, ["compare", str(short), str(long), *COMMON, "--out", str(tmp_path / "o")])
    assert "different context lengths" in err and "--context-length" in err
    centred = _random_standard_sae(tmp_path / "centred")
    cfg = json.loads((centred / "cfg.json").read_text())
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    (centred / "cfg.json").write_text(json.dumps(cfg))
    err = _one_line_error(capsys, ["compare", str(ours), str(centred), *COMMON, "--out", str(tmp_path / "o")])
    assert "differently processed models" in err and "center_writing_weights=True" in err


def test_names_globs_and_frontier(tmp_path):
    for name in ("sweep_10", "sweep_2", "sweep_1"):
        (tmp_path / name).mkdir()
    found = checkpoint_paths([str(tmp_path / "sweep_2")], [str(tmp_path / "sweep_*")])
    assert [os.path.basename(p) for p in found] == ["sweep_2", "sweep_1", "sweep_10"]  # no repeats
    paths = ["/a/run1/trainer_0", "/a/run2/trainer_0", "/b/x/ae.pt", "/c/sae.pt", "/r/layers.3", "/s/k64", "/t/k64"]
    assert unique_names(paths) == ["run1-trainer_0", "run2-trainer_0", "x", "c", "r-layers.3", "s-k64", "t-k64"]
    # (L0, loss recovered): the second is beaten by the first on both counts, the fourth ties nobody.
    assert pareto_front([(10, 0.8), (20, 0.7), (30, 0.9), (40, 0.95), (5, 0.1)]) == [4, 0, 2, 3]
