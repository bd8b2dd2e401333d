"""The evaluation's default dtype is the one the SAE was trained in (its SAELens cfg.json `dtype`); --dtype wins."""

from __future__ import annotations

import pytest
import torch

import saehealth
from saehealth.config import EvalConfig
from saehealth.evaluation import Evaluation


@pytest.fixture(scope="module")
def bfloat16_sae(tmp_path_factory):
    """A small random TopK SAE at the built-in model's middle residual hook whose cfg.json says bfloat16."""
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=128, d_sae=256, k=8, dtype="bfloat16")
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    folder = tmp_path_factory.mktemp("sae") / "bf16"
    TopKSAE(cfg).save_model(folder)
    return folder


def _planned(path, **options):
    run = Evaluation(EvalConfig(sae_path=str(path), device="cpu", **options), write=False)
    run.load()
    return run, run.plan()


def test_a_checkpoint_trained_in_bfloat16_runs_its_model_in_bfloat16(bfloat16_sae):
    run, plan = _planned(bfloat16_sae)
    assert run.config.dtype == "bfloat16"
    assert plan.model.cfg.dtype == torch.bfloat16
    assert run.loaded.sae.W_dec.dtype == torch.bfloat16
    assert any("the dtype the SAE was trained in (the SAE's cfg.json dtype)" in note for note in run.notes)


def test_dtype_float32_overrides_the_checkpoint(bfloat16_sae):
    run, plan = _planned(bfloat16_sae, dtype="float32")
    assert run.config.dtype == "float32"
    assert plan.model.cfg.dtype == torch.float32
    assert run.loaded.sae.W_dec.dtype == torch.float32
    assert any("trained in bfloat16 (the SAE's cfg.json dtype) but is evaluated in float32" in n for n in run.notes)


def test_the_dtype_is_a_setting_a_saved_result_must_match(bfloat16_sae):
    """A result computed in bfloat16 is never reused for a float32 request, nor the other way round."""
    bf16, _ = _planned(bfloat16_sae)
    f32, _ = _planned(bfloat16_sae, dtype="float32")
    assert bf16._request()["dtype"] == "bfloat16" and "dtype" not in f32._request()
