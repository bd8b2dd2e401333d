"""Home-grown BaseSAE checkpoints (a .pt state dict + its YAML) load as SAELens SAEs that compute the same.

Each reference below re-implements the original `encode`/`decode` from the BaseSAE project's documented maths
(sae/models.py, sae/matryoshka.py docstrings), independently of the loader. Weights are stored in bfloat16 as the
project saves them (the model is cast to the language model's dtype); Matryoshka's `group_sizes` is an int64 buffer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from saehealth.loading import detect_format, load_checkpoint

D_IN, D_SAE, K = 12, 32, 5


def _rand(*shape, scale=0.3):
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


def _state(kind: str, threshold: float = 0.05) -> dict[str, torch.Tensor]:
    if kind == "MatryoshkaSAE":
        return {"W_enc": _rand(D_IN, D_SAE), "b_enc": _rand(D_SAE, scale=0.1), "W_dec": _rand(D_SAE, D_IN),
                "b_dec": _rand(D_IN, scale=0.1), "group_sizes": torch.tensor([8, 8, 16], dtype=torch.int64),
                "threshold": torch.tensor(threshold).to(torch.bfloat16)}  # fmt: skip
    state = {
        "pre_bias": _rand(D_IN, scale=0.1),
        "encoder.weight": _rand(D_SAE, D_IN),
        "decoder.weight": _rand(D_IN, D_SAE),
    }
    if kind == "GatedSAE":
        return state | {
            "gate_bias": _rand(D_SAE, scale=0.1),
            "mag_bias": _rand(D_SAE, scale=0.1),
            "r_mag": _rand(D_SAE, scale=0.1),
        }
    state["latent_bias"] = _rand(D_SAE, scale=0.1)
    if kind == "JumpReLUSAE":
        state["threshold"] = torch.full((D_SAE,), threshold).to(torch.bfloat16)
    return state


def reference(kind: str, s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, reconstruction) of the original forward, in float32 from the stored weights."""
    s = {k: v.float() for k, v in s.items()}
    if kind == "MatryoshkaSAE":
        post = F.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        theta = float(s["threshold"])
        if theta >= 0:
            z = post * (post > theta)
        else:
            values, index = post.topk(K, dim=-1)
            z = torch.zeros_like(post).scatter_(-1, index, values)
        return z, z @ s["W_dec"] + s["b_dec"]
    pre = (x - s["pre_bias"]) @ s["encoder.weight"].T
    if kind == "GatedSAE":
        z = (pre + s["gate_bias"] > 0).float() * F.relu(torch.exp(s["r_mag"]) * pre + s["mag_bias"])
    else:
        pre = pre + s["latent_bias"]
        if kind == "VanillaSAE":
            z = F.relu(pre)
        elif kind == "TopKSAE":
            values, index = F.relu(pre).topk(K, dim=-1)
            z = torch.zeros_like(pre).scatter_(-1, index, values)
        else:  # JumpReLUSAE: no ReLU
            z = pre * (pre > s["threshold"]).float()
    return z, z @ s["decoder.weight"].T + s["pre_bias"]


def _save(folder, kind, state, layer=3, **model):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / f"{kind}_{layer}.pt")
    config = {"model": {"type": kind, "hidden_size": D_IN, "latent_size": D_SAE, "k": K, "layer": layer,
                        "language_model_path": "builtin", "threshold": 0.05, "group_sizes": [8, 8, 16], **model},
              "training": {"max_length": 64, "lr": 5e-4}, "data": {"train_path": "openbmb/ultra-fineweb"}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize(
    ("kind", "threshold", "architecture"),
    [
        ("VanillaSAE", 0.0, "standard"),
        ("TopKSAE", 0.0, "topk"),
        ("GatedSAE", 0.0, "gated"),
        ("JumpReLUSAE", 0.05, "jumprelu"),
        ("JumpReLUSAE", -0.2, "seed_jumprelu"),  # negative thresholds keep negative values: no ReLU
        ("MatryoshkaSAE", 0.1, "jumprelu"),  # the learned inference threshold
        ("MatryoshkaSAE", -1.0, "topk"),  # threshold never set: per-token TopK
    ],
)
def test_each_type_round_trips(tmp_path, kind, threshold, architecture):
    torch.manual_seed(0)
    state = _state(kind, threshold)
    folder = _save(tmp_path / "run", kind, state)
    assert detect_format(folder) == "basesae"
    loaded = load_checkpoint(folder)
    assert loaded.architecture == architecture
    assert loaded.hook_name == "blocks.2.hook_resid_post"  # hidden_states[3]
    assert (loaded.model_name, loaded.context_size) == ("builtin", 64)
    x = torch.randn(40, D_IN)
    z_ref, x_hat_ref = reference(kind, state, x)
    with torch.no_grad():
        z = loaded.sae.encode(x)
        x_hat = loaded.sae.decode(z)
    torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x_hat, x_hat_ref, atol=1e-6, rtol=1e-5)
    if kind == "JumpReLUSAE" and threshold < 0:
        assert bool((z < 0).any())  # the case that stock SAELens would have clipped
    if kind == "MatryoshkaSAE":
        assert loaded.training["group_sizes"] == [8, 8, 16]


def test_file_and_configs_folder_layout(tmp_path):
    """The project's own layout: models/TopKSAE_3.pt and configs/default.yaml under one root."""
    state = _state("TopKSAE")
    root = tmp_path / "SAEs"
    (root / "models").mkdir(parents=True)
    torch.save(state, root / "models" / "TopKSAE_3.pt")
    _save(root / "configs", "TopKSAE", state)
    (root / "configs" / "TopKSAE_3.pt").unlink()
    loaded = load_checkpoint(root / "models" / "TopKSAE_3.pt")
    assert loaded.format == "basesae" and loaded.architecture == "topk"


def test_layer_zero_is_the_embeddings_and_the_last_is_refused(tmp_path):
    assert load_checkpoint(_save(tmp_path / "a", "VanillaSAE", _state("VanillaSAE"), layer=0)).hook_name == (
        "blocks.0.hook_resid_pre"
    )
    with pytest.raises(Exception, match="last hidden state"):
        load_checkpoint(_save(tmp_path / "b", "VanillaSAE", _state("VanillaSAE"), layer=4, n_layers=4))


def test_routed_types_go_to_the_routed_loader(tmp_path):
    """A folder of the seed's layout whose YAML names a routed type loads through the routed adapter."""
    folder = _save(tmp_path / "r", "RouteSAE", {}, base_sae_type="TopKSAE", n_layers=5, start_layer=1, end_layer=3)
    state = {"router.router.weight": _rand(2, D_IN)} | {f"sae.{k}": v for k, v in _state("TopKSAE").items()}
    torch.save(state, folder / "RouteSAE_3.pt")
    loaded = load_checkpoint(folder)
    assert loaded.format == "routesae_seed"


def test_a_bare_pt_without_yaml_is_not_taken_for_basesae(tmp_path):
    torch.save(_state("VanillaSAE"), tmp_path / "ae.pt")
    assert detect_format(tmp_path / "ae.pt") != "basesae"
