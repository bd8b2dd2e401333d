"""Shared test setup: offline, seeded, and a few builders for hand-set SAE checkpoints."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seeded(tmp_path, monkeypatch):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    # Probe caches and other per-user state go to a fresh folder per test.
    monkeypatch.setenv("SAEHEALTH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def builtin_model():
    import saehealth

    return saehealth.load_model(saehealth.BUILTIN_MODEL)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models and SAEs: on shared cores a second OpenMP thread costs more than it gains
    (several times more on a loaded machine). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_sae(folder, *, hook_name, d_sae=256, seed=0, bias=-0.5, scale=0.1):
    """A SAELens standard SAE on 128-wide activations (the built-in model's) with random weights, sparse through
    a negative encoder bias; records the built-in model and context 128."""
    g = torch.Generator().manual_seed(seed)
    W_enc, W_dec = torch.randn(128, d_sae, generator=g) * scale, torch.randn(d_sae, 128, generator=g) * scale
    b_enc = torch.full((d_sae,), bias)
    return write_standard_sae(folder, W_enc, b_enc, W_dec, torch.zeros(128), hook_name=hook_name, context_size=128)


def write_standard_sae(
    folder,
    W_enc,
    b_enc,
    W_dec,
    b_dec,
    *,
    hook_name,
    model_name=None,
    apply_b_dec_to_input=False,
    context_size=None,
    hook_head_index=None,
):
    """Save a SAELens StandardSAE with the given weights; returns the folder."""
    from sae_lens import StandardSAE, StandardSAEConfig

    import saehealth

    d_in, d_sae = W_enc.shape
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=apply_b_dec_to_input)
    cfg.metadata.model_name = model_name or saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = hook_name
    if context_size is not None:
        cfg.metadata.context_size = context_size
    if hook_head_index is not None:
        cfg.metadata.hook_head_index = hook_head_index  # one head: (batch, pos, d_head), nothing to reshape
    elif hook_name.endswith("hook_z"):
        cfg.reshape_activations = "hook_z"
    sae = StandardSAE(cfg)
    sae.load_state_dict({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec})
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(folder)
    return folder


def shifted_identity_sae(folder, d_in, *, hook_name, decoder_scale=1.0, n_dead=0, shift=1000.0, **options):
    """An SAE that reconstructs x * decoder_scale exactly: f = relu(x + C) (always on), x̂ = s(f − C).

    Its d_in latents fire at every position; `n_dead` extra latents have a bias so negative that they
    can never fire.
    """
    d_sae = d_in + n_dead
    W_enc = torch.zeros(d_in, d_sae)
    W_enc[:, :d_in] = torch.eye(d_in)
    b_enc = torch.full((d_sae,), shift)
    b_enc[d_in:] = -1e9
    W_dec = torch.zeros(d_sae, d_in)
    W_dec[:d_in] = decoder_scale * torch.eye(d_in)
    W_dec[d_in:] = torch.randn(n_dead, d_in)
    b_dec = torch.full((d_in,), -shift * decoder_scale)
    return write_standard_sae(folder, W_enc, b_enc, W_dec, b_dec, hook_name=hook_name, **options)
