"""Round trip through EleutherAI sparsify: build with the library, save its way, load_sae, compare with its forward."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sparsify = pytest.importorskip("sparsify", reason="EleutherAI sparsify (eai-sparsify) is a test-only dependency")

from saehealth.loading import detect_format, load_checkpoint  # noqa: E402

D_IN = 16
RUN = {"model": "EleutherAI/pythia-70m", "dataset": "EleutherAI/SmolLM2-135M-10B", "ctx_len": 256}


def _coder(**cfg) -> sparsify.SparseCoder:
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(expansion_factor=2, k=4, **cfg))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.5)
        coder.b_dec.normal_()
        if cfg.get("transcode"):
            coder.W_dec.normal_()
        if coder.W_skip is not None:
            coder.W_skip.normal_(0, 0.2)
    return coder


def _write_run(folder, coders: dict[str, sparsify.SparseCoder]) -> None:
    """What sparsify's trainer writes: one folder per hookpoint and the run's config.json."""
    for hookpoint, coder in coders.items():
        coder.save_to_disk(folder / hookpoint)
    first = next(iter(coders.values()))
    run = sparsify.TrainConfig(first.cfg, hookpoints=list(coders), lr=2e-4).to_dict()
    (folder / "config.json").write_text(json.dumps({**run, **RUN}))


def _library_forward(coder: sparsify.SparseCoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense latents and output exactly as sparsify computes them."""
    with torch.no_grad():
        out = coder(x)
        dense = torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, out.latent_indices, out.latent_acts)
    return dense, out.sae_out


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _check_same(loaded, coder, x):
    dense, out = _library_forward(coder, x)
    with torch.no_grad():
        latents = loaded.sae.encode(x)
        recon = loaded.sae.decode(latents)
    assert _rel_err(latents, dense) <= 1e-4
    assert _rel_err(recon, out) <= 1e-4


@pytest.mark.parametrize(
    ("cfg", "architecture"),
    [
        ({}, "topk"),
        ({"activation": "groupmax"}, "groupmax"),
        ({"skip_connection": True}, "topk_skip"),
        ({"activation": "groupmax", "skip_connection": True}, "groupmax_skip"),
    ],
)
def test_hookpoint_folder_matches_sparsify_forward(tmp_path, cfg, architecture):
    coder = _coder(**cfg)
    _write_run(tmp_path, {"layers.1": coder})
    assert detect_format(tmp_path / "layers.1") == "sparsify"
    loaded = load_checkpoint(tmp_path / "layers.1")
    assert loaded.source_library == "sparsify"
    assert loaded.architecture == architecture
    assert loaded.hook_name == "blocks.1.hook_resid_post"
    assert (loaded.model_name, loaded.context_size, loaded.dataset_path) == (RUN["model"], 256, RUN["dataset"])
    assert loaded.training["k"] == 4 and loaded.training["lr"] == 2e-4
    assert loaded.sae.cfg.d_sae == 2 * D_IN
    _check_same(loaded, coder, torch.randn(32, D_IN))


def test_plain_topk_is_a_stock_saelens_topk_sae(tmp_path):
    from sae_lens import TopKSAE

    _write_run(tmp_path, {"layers.0": _coder()})
    assert type(load_checkpoint(tmp_path / "layers.0").sae) is TopKSAE


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_matches_sparsify_forward(tmp_path, skip):
    coder = _coder(transcode=True, skip_connection=skip)
    _write_run(tmp_path, {"layers.2.mlp": coder})
    loaded = load_checkpoint(tmp_path / "layers.2.mlp")
    assert loaded.architecture == "topk" + ("_skip" if skip else "") + "_transcoder"
    assert loaded.hook_name == "blocks.2.ln2.hook_normalized"
    assert loaded.output_hook_name == "blocks.2.hook_mlp_out"
    _check_same(loaded, coder, torch.randn(32, D_IN))
    # forward is decode(encode(x)) for transcoders too, skip term included
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sae(x), _library_forward(coder, x)[1], rtol=1e-4, atol=1e-5)


def test_skip_decode_without_encode_is_an_error(tmp_path):
    _write_run(tmp_path, {"layers.0": _coder(skip_connection=True)})
    sae = load_checkpoint(tmp_path / "layers.0").sae
    with pytest.raises(RuntimeError, match="skip connection"):
        sae.decode(torch.zeros(3, 2 * D_IN))


def test_run_folder_returns_one_sae_per_hookpoint_and_globs_select(tmp_path):
    coders = {"layers.0": _coder(), "layers.1": _coder(), "layers.1.mlp": _coder(), "embed_tokens": _coder()}
    _write_run(tmp_path, coders)
    assert detect_format(tmp_path) == "sparsify"
    everything = load_checkpoint(tmp_path)
    assert isinstance(everything, list)
    assert [loaded.training["hookpoint"] for loaded in everything] == [
        "embed_tokens",
        "layers.0",
        "layers.1",
        "layers.1.mlp",
    ]
    assert [loaded.hook_name for loaded in everything] == [
        "hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out",
    ]  # fmt: skip
    layers = load_checkpoint(tmp_path, select="layers.*")
    assert [loaded.training["hookpoint"] for loaded in layers] == ["layers.0", "layers.1", "layers.1.mlp"]
    mlps = load_checkpoint(tmp_path, select="layers.*.mlp")
    assert isinstance(mlps, list) and len(mlps) == 1
    one = load_checkpoint(tmp_path, select="layers.1")
    assert not isinstance(one, list) and one.hook_name == "blocks.1.hook_resid_post"
    by_hook = load_checkpoint(tmp_path, hook="blocks.1.hook_mlp_out")
    assert not isinstance(by_hook, list) and by_hook.training["hookpoint"] == "layers.1.mlp"
    _check_same(by_hook, coders["layers.1.mlp"], torch.randn(16, D_IN))
    with pytest.raises(Exception, match="No SAE .* matches 'h.\\*'.*available are embed_tokens"):
        load_checkpoint(tmp_path, select="h.*")


def test_gpt2_style_hookpoints(tmp_path):
    _write_run(tmp_path, {"h.0.mlp": _coder(), "h.0.attn": _coder(), "h.1": _coder()})
    mlps = load_checkpoint(tmp_path, select="h.*.mlp")
    assert [loaded.hook_name for loaded in mlps] == ["blocks.0.hook_mlp_out"]
    attn = load_checkpoint(tmp_path, select="h.0.attn")
    assert attn.hook_name == "blocks.0.hook_attn_out"


def test_seed_folders(tmp_path):
    for seed in (0, 1):
        _coder().save_to_disk(tmp_path / "layers.3" / f"seed{seed}")
    loaded = load_checkpoint(tmp_path)
    assert [item.path.split("/")[-1] for item in loaded] == ["seed0", "seed1"]
    assert {item.hook_name for item in loaded} == {"blocks.3.hook_resid_post"}
    assert loaded[0].model_name is None  # no run config.json: the checkpoint does not say
