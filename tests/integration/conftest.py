"""Shared integration fixtures: one evaluated report of an SAE with planted dense and duplicate latents."""

from __future__ import annotations

import os

import pytest
import torch

import saehealth

PLANTED_HOOK = "blocks.0.hook_resid_post"
PLANTED_TOKENS = 6000
DENSE_LATENT, TWIN_A, TWIN_B = 2, 0, 1


def planted_topk_sae(folder, d_sae: int = 512, k: int = 32, seed: int = 0):
    """A TopK SAE on the built-in model whose latent 2 fires on every token (a large encoder bias) and whose
    latents 0 and 1 are exact twins (same encoder column and decoder row): one dense latent, one
    near-duplicate pair."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=128, d_sae=d_sae, k=k)
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = PLANTED_HOOK
    sae = TopKSAE(cfg)
    state = {name: tensor.clone() for name, tensor in sae.state_dict().items()}
    state["W_enc"][:, TWIN_B] = state["W_enc"][:, TWIN_A]
    state["b_enc"][TWIN_B] = state["b_enc"][TWIN_A]
    state["W_dec"][TWIN_B] = state["W_dec"][TWIN_A]
    state["b_enc"][DENSE_LATENT] = 1000.0
    sae.load_state_dict(state)
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="session")
def latent_report(tmp_path_factory):
    """(checkpoint, result folder): the planted SAE evaluated by `saehealth eval` with the default latent
    examples (absorption skipped: its probes take most of a minute; tests/unit covers the absorption
    group); report.md and report.html written."""
    from saehealth.cli import main

    root = tmp_path_factory.mktemp("latent_report")
    checkpoint = planted_topk_sae(root / "planted")
    out = root / "report"
    previous = os.environ.get("SAEHEALTH_CACHE")
    os.environ["SAEHEALTH_CACHE"] = str(root / "cache")
    try:
        main(
            ["eval", "--sae-path", str(checkpoint), "--tokens", str(PLANTED_TOKENS), "--out", str(out), "--quiet"]
            + ["--skip", "absorption"]
        )
    finally:
        if previous is None:
            os.environ.pop("SAEHEALTH_CACHE", None)
        else:
            os.environ["SAEHEALTH_CACHE"] = previous
    return checkpoint, out
