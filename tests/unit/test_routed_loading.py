"""Routed-SAE loaders on synthetic state dicts in both layouts (the authors' RouteSAEs and the seed's), with errors."""

from __future__ import annotations

import pytest
import torch

from saehealth.cli import main
from saehealth.errors import CheckpointError, ConfigError, IncompatibleSAEError
from saehealth.loading import detect_format, load_checkpoint
from saehealth.routed.spec import RouteSpec, hook_of_layer, official_layers, routed_hooks

D, M = 8, 16


def _official_state(routes: int = 3, d: int = D, m: int = M) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "router.weight": torch.randn(routes, d, generator=g),
        "sae.pre_bias": torch.randn(d, generator=g),
        "sae.latent_bias": torch.randn(m, generator=g),
        "sae.encoder.weight": torch.randn(m, d, generator=g),
        "sae.decoder.weight": torch.randn(d, m, generator=g),
    }


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ the authors' layout
def test_official_layout_reads_k_routing_from_the_file_name_and_transposes(tmp_path):
    state = _official_state()
    path = tmp_path / "mean_soft_K4_1B_train_16.pt"
    torch.save(state, path)
    assert detect_format(path) == "routesae"
    loaded = load_checkpoint(path)
    spec = loaded.route
    assert (spec.aggregation, spec.routing, spec.normalize_eps, spec.splice_mode) == ("mean", "soft", 1e-6, "official")
    assert spec.sources["k"] == "file name" and spec.sources["eps"] == "default"
    assert spec.hooks is None and spec.layers is None  # decided by the model's depth
    assert loaded.sae.cfg.k == 4 and loaded.sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(loaded.sae.W_enc, state["sae.encoder.weight"].T)
    torch.testing.assert_close(loaded.sae.W_dec, state["sae.decoder.weight"].T)
    torch.testing.assert_close(loaded.sae.b_dec, state["sae.pre_bias"])
    torch.testing.assert_close(spec.router, state["router.weight"])


def test_signed_topk_keeps_negative_values_and_matches_torch_topk(tmp_path):
    state = _official_state()
    state["sae.latent_bias"] = torch.full((M,), -100.0)  # every pre-activation is very negative
    torch.save(state, tmp_path / "sum_hard_K3_x_y_16.pt")
    sae = load_checkpoint(tmp_path / "sum_hard_K3_x_y_16.pt").sae
    x = torch.randn(5, D)
    acts = sae.encode(x)
    pre = (x - state["sae.pre_bias"]) @ state["sae.encoder.weight"].T + state["sae.latent_bias"]
    top = torch.topk(pre, 3, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(acts, expected)
    assert bool((acts < 0).sum(-1).eq(3).all())  # L0 = k, all negative: SAELens' TopK would give 0


def test_route_options_override_the_file_name_with_a_note_and_hooks_set_the_layers(tmp_path):
    torch.save(_official_state(routes=2), tmp_path / "sum_hard_K4_1B_train_16.pt")
    loaded = load_checkpoint(
        tmp_path / "sum_hard_K4_1B_train_16.pt",
        hook="blocks.0.hook_resid_post,blocks.1.hook_resid_post",
        route="k=2,splice=rescaled,eps=1e-5",
    )
    assert loaded.sae.cfg.k == 2 and loaded.route.splice_mode == "rescaled" and loaded.route.normalize_eps == 1e-5
    assert loaded.route.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert loaded.route.sources["k"] == "option (--route)" and loaded.route.sources["layers"] == "option (--hook)"
    assert any("overrides 4" in note for note in loaded.notes)


def test_official_layout_errors(tmp_path):
    torch.save(_official_state(), tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="--route k=K"):
        load_checkpoint(tmp_path / "checkpoint.pt")  # no settings in the name, none given
    torch.save(_official_state(), tmp_path / "sum_hard_K4_1B_train_99.pt")
    with pytest.raises(CheckpointError, match="says 99 latents"):
        load_checkpoint(tmp_path / "sum_hard_K4_1B_train_99.pt")
    with pytest.raises(CheckpointError, match="3 rows but --hook names 2"):
        load_checkpoint(tmp_path / "checkpoint.pt", hook="blocks.0.hook_resid_post,blocks.1.hook_resid_post",
                        route="k=2,aggregation=sum,routing=hard")  # fmt: skip
    with pytest.raises(ConfigError, match="unknown"):
        load_checkpoint(tmp_path / "checkpoint.pt", route="kk=2")
    with pytest.raises(ConfigError, match="not one of"):
        load_checkpoint(tmp_path / "checkpoint.pt", route="routing=sideways")


def test_bare_single_layer_file_is_not_taken_for_an_openai_relu_autoencoder(tmp_path):
    state = {k.removeprefix("sae."): v for k, v in _official_state().items() if k.startswith("sae.")}
    path = tmp_path / "L6_K64_1B_train_16.pt"
    torch.save(state, path)
    assert detect_format(path) != "openai"
    with pytest.raises(IncompatibleSAEError, match="RouteSAEs single-layer"):
        load_checkpoint(path)
    with pytest.raises(IncompatibleSAEError, match="lacks the 'activation' entry"):
        load_checkpoint(path, format="openai")


def test_hook_mapping_of_hidden_state_indices():
    assert [hook_of_layer(h, 16) for h in official_layers(16)] == [
        f"blocks.{b}.hook_resid_post" for b in range(3, 12)
    ]  # the paper's "[3:11]" on Llama-3.2-1B
    assert [hook_of_layer(h, 28) for h in official_layers(28)][::14] == [
        "blocks.6.hook_resid_post",
        "blocks.20.hook_resid_post",
    ]
    assert hook_of_layer(0, 4) == "blocks.0.hook_resid_pre"
    with pytest.raises(CheckpointError, match="after the final norm"):
        hook_of_layer(4, 4)
    spec = RouteSpec(torch.zeros(9, 4), "sum", "hard", None, "official", "routesaes")
    assert routed_hooks(spec, 16)[0] == "blocks.3.hook_resid_post"
    with pytest.raises(CheckpointError, match="pass the routed hooks with --hook"):
        routed_hooks(spec, 2)  # the built-in 2-layer model cannot follow n//4 … 3n//4


# ------------------------------------------------------------------------------------ the seed's layout
def _seed_yaml(folder, **model) -> None:
    import yaml

    base = {"type": "RouteSAE", "base_sae_type": "TopKSAE", "n_layers": 28, "hidden_size": D, "latent_size": M,
            "k": 4, "aggre": "sum", "routing": "hard", "language_model_path": "Qwen/Qwen3-1.7B"}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {**base, **model}, "training": {"lr": 5e-4}}))


def _seed_topk_state(routes: int) -> dict:
    state = {f"sae.{k.removeprefix('sae.')}": v for k, v in _official_state(routes).items() if k.startswith("sae.")}
    state["router.router.weight"] = torch.randn(routes, D)
    return {k: v.to(torch.bfloat16) for k, v in state.items()}


def test_seed_topk_with_its_yaml_and_the_default_layers(tmp_path):
    _seed_yaml(tmp_path)
    torch.save(_seed_topk_state(18), tmp_path / "RouteSAE_21.pt")  # n//5 … 4n//5 of 28: 18 layers
    assert detect_format(tmp_path / "RouteSAE_21.pt") == "routesae_seed"
    loaded = load_checkpoint(tmp_path / "RouteSAE_21.pt")
    spec = loaded.route
    assert spec.layers == list(range(5, 23)) and routed_hooks(spec, 28)[0] == "blocks.4.hook_resid_post"
    assert routed_hooks(spec, 28)[-1] == "blocks.21.hook_resid_post"
    assert spec.normalize_eps is None and spec.splice_mode == "rescaled" and loaded.architecture == "route_topk"
    assert loaded.model_name == "Qwen/Qwen3-1.7B" and loaded.sae.dtype == torch.float32
    assert spec.sources["aggregation"] == "YAML (config.yaml)"


def test_seed_matryoshka_bfloat16_group_sizes_and_threshold(tmp_path):
    _seed_yaml(tmp_path, type="RouteMatryoshkaSAE", base_sae_type="MatryoshkaSAE", start_layer=9, end_layer=27,
               group_sizes=[4, 4, 8])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    state = {
        "router.router.weight": torch.randn(18, D, generator=g),
        "sae.W_enc": torch.randn(D, M, generator=g),
        "sae.b_enc": torch.randn(M, generator=g),
        "sae.W_dec": torch.randn(M, D, generator=g),
        "sae.b_dec": torch.randn(D, generator=g),
        "sae.group_sizes": torch.tensor([4, 4, 8]),  # int64
        "sae.threshold": torch.tensor(0.5),
    }
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "RouteMatryoshkaSAE_21.pt")
    loaded = load_checkpoint(tmp_path / "RouteMatryoshkaSAE_21.pt")
    assert loaded.architecture == "route_jumprelu" and loaded.training["group_sizes"] == [4, 4, 8]
    assert routed_hooks(loaded.route, 28)[0] == "blocks.8.hook_resid_post"
    assert routed_hooks(loaded.route, 28)[-1] == "blocks.25.hook_resid_post"
    x = torch.randn(6, D)
    pre = torch.relu((x - state["sae.b_dec"].float()) @ state["sae.W_enc"].float() + state["sae.b_enc"].float())
    torch.testing.assert_close(loaded.sae.encode(x), pre * (pre > 0.5))
    state["sae.threshold"] = torch.tensor(-1.0)  # never set: per-token TopK, with a note
    torch.save(state, tmp_path / "RouteMatryoshkaSAE_21.pt")
    loaded = load_checkpoint(tmp_path / "RouteMatryoshkaSAE_21.pt")
    assert loaded.architecture == "route_topk" and any("approximates HEAD's BatchTopK" in n for n in loaded.notes)


def test_seed_layout_errors(tmp_path):
    torch.save(_seed_topk_state(18), tmp_path / "RouteSAE_21.pt")
    with pytest.raises(CheckpointError, match="--route config=FILE"):
        load_checkpoint(tmp_path / "RouteSAE_21.pt")  # no YAML
    _seed_yaml(tmp_path, start_layer=9, end_layer=20)
    with pytest.raises(CheckpointError, match="router has 18 rows but the routed layers are 11"):
        load_checkpoint(tmp_path / "RouteSAE_21.pt")
    _seed_yaml(tmp_path, type="RouteMatryoshkaSAE", start_layer=9, end_layer=27)
    state = {"router.router.weight": torch.randn(18, D), "sae.W_enc": torch.randn(D, M), "sae.b_enc": torch.randn(M),
             "sae.W_dec": torch.randn(M, D), "sae.b_dec": torch.randn(D), "sae.group_sizes": torch.tensor([4, 4])}  # fmt: skip
    torch.save(state, tmp_path / "RouteSAE_21.pt")
    with pytest.raises(CheckpointError, match="sum to 8, not the 16 latents"):
        load_checkpoint(tmp_path / "RouteSAE_21.pt")
    _seed_yaml(tmp_path, type="TopKSAE")
    with pytest.raises(CheckpointError, match="not a routed SAE"):
        load_checkpoint(tmp_path / "RouteSAE_21.pt")


def test_inspect_shows_the_router_layers_hooks_and_where_each_setting_came_from(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    _seed_yaml(tmp_path, start_layer=9, end_layer=27)
    torch.save(_seed_topk_state(18), tmp_path / "RouteSAE_21.pt")
    code, out, err = _run(capsys, "inspect", str(tmp_path / "RouteSAE_21.pt"), "--route", "splice=official")
    assert code == 0, err
    for expected in ("routesae_seed", "18 layers x 8", "h9 = blocks.8.hook_resid_post", "hard, from YAML",
                     "official, from option (--route)", "none (raw activations)"):  # fmt: skip
        assert expected in out, expected
    code, _, err = _run(capsys, "inspect", str(tmp_path / "RouteSAE_21.pt"), "--route", "k=zero")
    assert code == 1 and "k=zero" in err and "Traceback" not in err
