"""`saehealth eval` of a training run's checkpoints folder (SAELens writes one folder per checkpoint, named after
the training tokens seen): metrics against training tokens, a table and a plot, instead of the per-layer view."""

from __future__ import annotations

import json

import torch

import saehealth
from saehealth.cli import main

HOOK = "blocks.0.hook_resid_post"


def _checkpoint(folder, scale: float) -> None:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    cfg = TopKSAEConfig(d_in=128, d_sae=128, k=16)
    cfg.metadata.model_name, cfg.metadata.hook_name = saehealth.BUILTIN_MODEL, HOOK
    sae = TopKSAE(cfg)
    with torch.no_grad():  # closer to the identity as "training" goes on: the numbers must follow the order
        sae.W_enc.copy_(torch.eye(128) * 10)
        sae.W_dec.copy_(torch.eye(128) * scale)
    sae.save_model(folder)


def test_eval_of_a_checkpoints_folder_is_a_trajectory(tmp_path):
    run = tmp_path / "demo-checkpoints"
    for name, scale in (("512", 0.02), ("1024", 0.04), ("final_4096", 0.08)):  # '1024' sorts before '512' as text
        _checkpoint(run / name, scale)
    out = tmp_path / "out"
    main(["eval", "--sae-path", str(run), "--tokens", "1024", "--skip", "absorption", "--out", str(out), "--quiet"])
    summary = json.loads((out / "trajectory.json").read_text())
    assert summary["view"] == "trajectory"
    assert [sae["training_tokens"] for sae in summary["saes"]] == [512, 1024, 4096]
    l0 = [sae["metrics"]["l0"] for sae in summary["saes"]]
    assert len(set(l0)) == 1  # same encoder: only the decoder changed
    explained = [sae["metrics"]["explained_variance"] for sae in summary["saes"]]
    assert explained == sorted(explained) and explained[0] < explained[-1]  # rows in training order
    assert (out / "metrics_by_training_tokens.png").stat().st_size > 0
    report = (out / "trajectory_report.md").read_text()
    assert "# SAE health over training" in report and "metrics_by_training_tokens.png" in report
