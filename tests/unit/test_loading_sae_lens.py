"""SAELens checkpoints: v6 folders, pre-6.0 flat configs, training checkpoints, pretrained releases (offline)."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saehealth.errors import CheckpointError, ConfigError
from saehealth.loading import available_formats, detect_format, load_checkpoint, load_sae


def _standard_sae(d_in=16, d_sae=32, **metadata) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(**metadata)))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae


def _max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def test_v6_folder_round_trip(tmp_path):
    sae = _standard_sae(hook_name="blocks.1.hook_resid_post", model_name="tiny", context_size=64, dataset_path="d")
    sae.save_model(tmp_path / "sae")
    (tmp_path / "sae" / "runner_cfg.json").write_text(
        json.dumps({"training_tokens": 1000, "lr": 3e-4, "sae": {"l1_coefficient": 5.0, "architecture": "standard"}})
    )
    loaded = load_checkpoint(tmp_path / "sae")
    assert (loaded.format, loaded.source_library, loaded.architecture) == ("sae_lens", "sae_lens", "standard")
    assert (loaded.hook_name, loaded.model_name, loaded.context_size, loaded.dataset_path) == (
        "blocks.1.hook_resid_post", "tiny", 64, "d",
    )  # fmt: skip
    assert loaded.output_hook_name is None
    assert loaded.training["training_tokens"] == 1000
    assert loaded.training["lr"] == 3e-4
    assert loaded.training["l1_coefficient"] == 5.0
    assert not loaded.sae.training
    x = torch.randn(8, 16)
    torch.testing.assert_close(loaded.sae.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded.sae.decode(loaded.sae.encode(x)), sae.decode(sae.encode(x)))


def test_marker_file_stands_for_its_folder_and_dtype_is_applied(tmp_path):
    _standard_sae(hook_name="blocks.0.hook_resid_post").save_model(tmp_path)
    assert detect_format(tmp_path / "cfg.json") == "sae_lens"
    sae = load_sae(tmp_path / "sae_weights.safetensors", dtype="float64")
    assert sae.W_enc.dtype == torch.float64


def test_pre_v6_flat_config_is_upgraded(tmp_path):
    sae = _standard_sae()
    sae.save_model(tmp_path)
    flat = {
        "d_in": 16, "d_sae": 32, "dtype": "float32", "device": "cpu", "architecture": "standard",
        "hook_point": "blocks.2.hook_resid_pre", "model_name": "gpt2", "context_size": 128,
        "dataset_path": "Skylion007/openwebtext", "apply_b_dec_to_input": True, "activation_fn_str": "relu",
        "normalize_activations": False, "l1_coefficient": 8e-5, "lr": 4e-4, "training_tokens": 300_000_000,
        "sae_lens_training_version": "3.0.0",
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(flat))
    loaded = load_checkpoint(tmp_path)
    assert loaded.hook_name == "blocks.2.hook_resid_pre"
    assert loaded.model_name == "gpt2"
    assert loaded.training["l1_coefficient"] == 8e-5
    assert loaded.training["training_tokens"] == 300_000_000
    assert any("pre-6.0" in n for n in loaded.notes)
    x = torch.randn(4, 16)
    torch.testing.assert_close(loaded.sae.decode(loaded.sae.encode(x)), sae.decode(sae.encode(x)))


def test_training_checkpoint_folds_scaling_factor(tmp_path):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    train = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=16, d_sae=32, normalize_activations="expected_average_only_in",
            metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="tiny"),
        )
    )  # fmt: skip
    with torch.no_grad():
        for p in train.parameters():
            p.normal_()
    folder = tmp_path / "checkpoints" / "1024"
    train.save_model(folder)
    scale = 2.5
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale, "has_whitening": False}))
    assert detect_format(folder) == "sae_lens_checkpoint"
    loaded = load_checkpoint(folder)
    assert loaded.format == "sae_lens_checkpoint"
    x = torch.randn(6, 16)
    # The training SAE saw activations multiplied by the scaling factor and predicted scaled activations.
    expected_latents = train.encode(x * scale)
    expected_recon = train.decode(expected_latents) / scale
    assert _max_rel_err(loaded.sae.encode(x), expected_latents) < 1e-5
    assert _max_rel_err(loaded.sae.decode(loaded.sae.encode(x)), expected_recon) < 1e-5
    assert any("2.5" in n for n in loaded.notes)


def test_batchtopk_training_checkpoint_becomes_jumprelu(tmp_path):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    train = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, rescale_acts_by_decoder_norm=False))
    with torch.no_grad():
        for p in train.parameters():
            p.normal_()
        train.topk_threshold.fill_(0.7)
    train.save_model(tmp_path)  # cfg.json architecture "batchtopk": training-only
    loaded = load_checkpoint(tmp_path)
    assert loaded.format == "sae_lens_checkpoint"
    assert loaded.architecture == "batchtopk"
    assert loaded.sae.cfg.architecture() == "jumprelu"
    x = torch.randn(6, 16)
    pre = (x - train.b_dec) @ train.W_enc + train.b_enc
    expected = pre.relu() * (pre > 0.7)
    assert _max_rel_err(loaded.sae.encode(x), expected.detach()) < 1e-5


def test_pretrained_release_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="hub|not found"):
        load_checkpoint(release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")


def test_pretrained_needs_both_release_and_sae_id():
    with pytest.raises(CheckpointError, match="release= and sae_id="):
        load_checkpoint(release="gpt2-small-res-jb")


def test_unknown_format_and_dtype_list_the_valid_ones(tmp_path):
    _standard_sae().save_model(tmp_path)
    with pytest.raises(ConfigError, match="choose from sae_lens_checkpoint, sae_lens.*Did you mean 'sae_lens'"):
        load_checkpoint(tmp_path, format="sae_lense")
    with pytest.raises(ConfigError, match="bfloat16"):
        load_checkpoint(tmp_path, dtype="float8")
    assert available_formats()[:2] == ["sae_lens_checkpoint", "sae_lens"]


def test_hook_override_is_recorded(tmp_path):
    _standard_sae(hook_name="blocks.0.hook_resid_post").save_model(tmp_path)
    loaded = load_checkpoint(tmp_path, hook="blocks.1.hook_resid_post")
    assert loaded.hook_name == "blocks.1.hook_resid_post"
    assert loaded.sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert any("hook set to" in n for n in loaded.notes)
