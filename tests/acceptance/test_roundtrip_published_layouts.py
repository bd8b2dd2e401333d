"""Formats without an installable package: files written exactly as their published layouts describe, loaded
with load_checkpoint, and compared against a few-line independent implementation of the documented forward.

- Gemma Scope: params.npz (W_enc, W_dec, b_enc, b_dec, threshold); JumpReLU, no b_dec on the input.
- Llama Scope: hyperparams.json + checkpoints/final.safetensors; dataset-wise input norm, decoder-norm-aware threshold.
- OpenAI sparse_autoencoder: Autoencoder.state_dict() in a .pt; TopK with LN on the input.
- minSAE: best_sae.pt with model_state_dict + config; relu / topk autoencoders with nn.Linear biases.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saehealth.loading import detect_format, load_checkpoint

D_IN, D_SAE = 16, 40


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _check(loaded, x, latents, recon):
    with torch.no_grad():
        got_latents = loaded.sae.encode(x)
        got_recon = loaded.sae.decode(got_latents)
    assert (latents != 0).any() and (latents == 0).any()
    assert _rel_err(got_latents, latents) <= 1e-4
    assert _rel_err(got_recon, recon) <= 1e-4


# ---------------------------------------------------------------------------------------------- Gemma Scope
def _gemma_params(folder):
    folder.mkdir(parents=True, exist_ok=True)
    params = {
        "W_enc": np.random.randn(D_IN, D_SAE).astype(np.float32) * 0.5,
        "W_dec": np.random.randn(D_SAE, D_IN).astype(np.float32) * 0.5,
        "b_enc": np.random.randn(D_SAE).astype(np.float32) * 0.2,
        "b_dec": np.random.randn(D_IN).astype(np.float32),
        "threshold": np.random.uniform(0.1, 1.0, D_SAE).astype(np.float32),
    }
    np.savez(folder / "params.npz", **params)
    return {k: torch.from_numpy(v) for k, v in params.items()}


def _gemma_forward(p, x):
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * torch.relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_gemma_scope_published_layout(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    params = _gemma_params(folder)
    assert detect_format(folder / "params.npz") == "gemma_scope"
    loaded = load_checkpoint(folder)
    assert (loaded.source_library, loaded.architecture) == ("gemma_scope", "jumprelu")
    assert (loaded.hook_name, loaded.model_name) == ("blocks.12.hook_resid_post", "gemma-2-2b")
    assert loaded.training["average_l0"] == 82
    x = torch.randn(64, D_IN) * 2
    _check(loaded, x, *_gemma_forward(params, x))


def test_gemma_scope_file_outside_its_layout_has_no_hook(tmp_path):
    _gemma_params(tmp_path)
    loaded = load_checkpoint(tmp_path / "params.npz")
    assert loaded.hook_name is None and loaded.model_name is None
    assert any("--hook" in note for note in loaded.notes)


def test_gemma_scope_transcoder(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_3" / "width_16k" / "average_l0_50"
    params = _gemma_params(folder)
    loaded = load_checkpoint(folder)
    assert (loaded.hook_name, loaded.output_hook_name) == ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")
    x = torch.randn(64, D_IN) * 2
    _check(loaded, x, *_gemma_forward(params, x))


# ---------------------------------------------------------------------------------------------- Llama Scope
def _llama_scope(folder, *, include_decoder_norm: bool, bias_to_encoder: bool, norm_in=7.0, norm_out=9.0):
    (folder / "checkpoints").mkdir(parents=True)
    hp = {
        "d_model": D_IN, "d_sae": D_SAE, "expansion_factor": D_SAE / D_IN, "act_fn": "jumprelu",
        "jump_relu_threshold": 0.6, "norm_activation": "dataset-wise", "top_k": 8,
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        "sparsity_include_decoder_norm": include_decoder_norm, "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": bias_to_encoder,
        "hook_point_in": "blocks.5.hook_resid_post", "hook_point_out": "blocks.5.hook_resid_post",
    }  # fmt: skip
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    weights = {
        "encoder.weight": torch.randn(D_SAE, D_IN) * 0.4,
        "encoder.bias": torch.randn(D_SAE) * 0.3,
        "decoder.weight": torch.randn(D_IN, D_SAE) * torch.rand(D_SAE) * 2,  # decoder norms far from 1
        "decoder.bias": torch.randn(D_IN) * 0.5,
    }
    save_file(weights, folder / "checkpoints" / "final.safetensors")
    return hp, weights


def _llama_forward(hp, w, x):
    """OpenMOSS Language-Model-SAEs encode/decode in raw activation units (norm factors undone on the output)."""
    s_in = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
    h = x * s_in
    if hp["apply_decoder_bias_to_pre_encoder"]:
        h = h - w["decoder.bias"]
    pre = h @ w["encoder.weight"].T + w["encoder.bias"]
    scores = pre * w["decoder.weight"].norm(dim=0) if hp["sparsity_include_decoder_norm"] else pre
    acts = pre * (scores > hp["jump_relu_threshold"])
    return acts, (acts @ w["decoder.weight"].T + w["decoder.bias"]) / s_out


@pytest.mark.parametrize("include_decoder_norm", [True, False])
@pytest.mark.parametrize("bias_to_encoder", [True, False])
def test_llama_scope_published_layout(tmp_path, include_decoder_norm, bias_to_encoder):
    hp, weights = _llama_scope(tmp_path, include_decoder_norm=include_decoder_norm, bias_to_encoder=bias_to_encoder)
    assert detect_format(tmp_path) == "llama_scope"
    loaded = load_checkpoint(tmp_path / "hyperparams.json")
    assert (loaded.source_library, loaded.architecture, loaded.hook_name) == (
        "llama_scope", "jumprelu", "blocks.5.hook_resid_post",
    )  # fmt: skip
    assert loaded.training["jump_relu_threshold"] == 0.6
    x = torch.randn(64, D_IN) * 3
    _check(loaded, x, *_llama_forward(hp, weights, x))


# ---------------------------------------------------------------------------------------------- OpenAI
def _openai_state(activation: str, k: int = 5) -> dict:
    state = {
        "pre_bias": torch.randn(D_IN) * 0.3,
        "encoder.weight": torch.randn(D_SAE, D_IN) * 0.4,
        "latent_bias": torch.randn(D_SAE) * 0.2,
        "decoder.weight": torch.randn(D_IN, D_SAE) * 0.4,
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
        "latents_activation_frequency": torch.ones(D_SAE),
        "latents_mean_square": torch.zeros(D_SAE),
        "activation": activation,
    }
    if activation == "TopK":
        state["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    return state


def _openai_forward(s, x, topk: bool):
    info = None
    if topk:  # LN as in sparse_autoencoder.model.LN, only for TopK (from_state_dict's normalize)
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        x, info = (x - mu) / (std + 1e-5), (mu, std)
    pre = (x - s["pre_bias"]) @ s["encoder.weight"].T + s["latent_bias"]
    if topk:
        top = torch.topk(pre, k=s["activation_state_dict"]["k"], dim=-1)
        acts = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    else:
        acts = torch.relu(pre)
    recon = acts @ s["decoder.weight"].T + s["pre_bias"]
    if info is not None:
        recon = recon * info[1] + info[0]
    return acts, recon


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai_published_layout(tmp_path, activation):
    folder = tmp_path / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders"
    folder.mkdir(parents=True)
    state = _openai_state(activation)
    torch.save(state, folder / "5.pt")
    assert detect_format(folder / "5.pt") == "openai"
    loaded = load_checkpoint(folder / "5.pt")
    assert loaded.architecture == ("topk" if activation == "TopK" else "standard")
    assert (loaded.hook_name, loaded.model_name) == ("blocks.5.hook_resid_post", "gpt2")
    x = torch.randn(64, D_IN) * 4 + 1.5
    _check(loaded, x, *_openai_forward(state, x, topk=activation == "TopK"))
    if activation == "TopK":
        assert loaded.training["k"] == 5
        assert loaded.sae.cfg.normalize_activations == "layer_norm"


# ---------------------------------------------------------------------------------------------- minSAE
def _minsae_checkpoint(path, sae_type: str, topk: int = 6):
    encoder, decoder = torch.nn.Linear(D_IN, D_SAE), torch.nn.Linear(D_SAE, D_IN)
    with torch.no_grad():
        decoder.bias.normal_(0, 0.5)
    model = torch.nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model["decoder"](model["encoder"](torch.randn(4, D_IN))).sum().backward()
    optimizer.step()
    config = {"model_name": "meta-llama/Llama-2-7b-hf", "layer_idx": 8, "d_hidden": D_SAE, "expansion_factor": 4,
              "learning_rate": 1e-3, "batch_size": 1024, "shard_size": 10000, "l1_coef": 1e-3, "topk": topk,
              "num_epochs": 10, "num_train_samples": None, "num_val_samples": None, "sae_type": sae_type}  # fmt: skip
    torch.save(
        {"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
         "validation_loss": 0.0423, "config": config},
        path,
    )  # fmt: skip
    return encoder, decoder


def _minsae_forward(encoder, decoder, x, topk: int | None):
    with torch.no_grad():
        h = torch.relu(encoder(x))
        if topk:
            mask = torch.zeros_like(h).scatter_(-1, h.topk(topk, dim=-1).indices, 1)
            h = h * mask
        return h, decoder(h)


@pytest.mark.parametrize("sae_type", ["relu", "topk"])
def test_minsae_published_layout(tmp_path, sae_type):
    encoder, decoder = _minsae_checkpoint(tmp_path / "best_sae.pt", sae_type)
    _minsae_checkpoint(tmp_path / "final_sae.pt", sae_type)
    assert detect_format(tmp_path) == "minsae"
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.endswith("best_sae.pt")
    assert loaded.architecture == ("topk" if sae_type == "topk" else "standard")
    assert (loaded.hook_name, loaded.model_name) == ("blocks.8.hook_mlp_out", "meta-llama/Llama-2-7b-hf")
    assert loaded.training["validation_loss"] == pytest.approx(0.0423)
    assert loaded.training["epoch"] == 3
    x = torch.randn(64, D_IN)
    _check(loaded, x, *_minsae_forward(encoder, decoder, x, 6 if sae_type == "topk" else None))
