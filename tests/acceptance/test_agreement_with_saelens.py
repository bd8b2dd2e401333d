"""saehealth's numbers against SAELens `run_evals` (every metric on) on identical token batches.

Where the definitions are the same (METRICS.md says which), the numbers must agree within 1e-3; where
they differ, the documented relation is pinned.
"""

from __future__ import annotations

import pytest
import torch

import saehealth
from saehealth.crosscheck import comparable, saelens_run_evals
from saehealth.data import load_dataset, sequence_batches
from saehealth.replay import splice_site
from saehealth.scoring import score_batches

N_SEQUENCES = 24
BATCH = 8


def _trained_like_sae(architecture: str, hook: str, d_in: int, seed: int):
    """An SAE with structured (not random) weights, so CE/KL differences are neither 0 nor total."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    d_sae = 4 * d_in
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    state = {"W_enc": W_dec.T.clone() * 0.8, "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    if architecture == "topk":
        cfg, cls = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32), TopKSAE
        state["b_enc"] = torch.zeros(d_sae)
    elif architecture == "jumprelu":
        cfg, cls = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae), JumpReLUSAE
        state["b_enc"] = torch.zeros(d_sae)
        state["threshold"] = torch.full((d_sae,), 0.05)
    else:
        cfg, cls = StandardSAEConfig(d_in=d_in, d_sae=d_sae), StandardSAE
        state["b_enc"] = torch.full((d_sae,), -0.2)
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    sae = cls(cfg)
    sae.load_state_dict(state)
    return sae.eval()


@pytest.mark.parametrize(
    ("architecture", "hook", "d_in"),
    [
        ("standard", "blocks.0.hook_resid_post", 128),
        ("topk", "blocks.1.hook_mlp_out", 128),
        ("jumprelu", "blocks.0.hook_resid_pre", 128),
    ],
)
def test_same_numbers_as_saelens_run_evals(builtin_model, architecture, hook, d_in):
    sae = _trained_like_sae(architecture, hook, d_in, seed=1)
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    batches = list(sequence_batches(dataset, builtin_model.tokenizer, 128, N_SEQUENCES, BATCH, 0))

    ours = score_batches(builtin_model, [(splice_site(hook), sae)], batches)[0].metrics
    theirs = saelens_run_evals(builtin_model, sae, batches)

    assert 0.05 < ours["loss_recovered"] < 0.999  # a non-trivial SAE, or the comparison says little
    for key, value in comparable(theirs).items():
        assert ours[key] == pytest.approx(value, abs=1e-3, rel=1e-3), key
    # SAELens' mse sums over the d_in dimensions per token; ours is per element (METRICS.md).
    assert theirs["reconstruction_quality"]["mse"] == pytest.approx(ours["mse"] * d_in, rel=1e-4)
