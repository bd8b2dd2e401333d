"""Bad checkpoints: each is one CheckpointError naming the problem and the fix, never a deep traceback."""

from __future__ import annotations

import json
import os

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from safetensors.torch import load_file, save_file

from saehealth.errors import CheckpointError
from saehealth.loading import detect_format, load_checkpoint
from saehealth.loading.base import Registry
from saehealth.loading.files import load_torch_file


@pytest.fixture
def sae_folder(tmp_path):
    folder = tmp_path / "sae"
    StandardSAE(StandardSAEConfig(d_in=16, d_sae=32)).save_model(folder)
    return folder


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        load_checkpoint(tmp_path / "nope")
    _one_line(exc)


def test_folder_without_a_checkpoint_says_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError) as exc:
        detect_format(tmp_path)
    message = _one_line(exc)
    assert "notes.txt" in message
    assert "cfg.json + sae_weights.safetensors" in message
    assert "--format" in message


def test_cfg_without_weights_is_not_recognised(sae_folder):
    (sae_folder / "sae_weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="cfg.json"):
        load_checkpoint(sae_folder)
    with pytest.raises(CheckpointError, match="sae_weights.safetensors is missing"):
        load_checkpoint(sae_folder, format="sae_lens")


def test_truncated_safetensors(sae_folder):
    weights = sae_folder / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as exc:
        load_checkpoint(sae_folder)
    assert "sae_weights.safetensors" in _one_line(exc)


def test_garbage_safetensors(sae_folder):
    (sae_folder / "sae_weights.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(sae_folder)


def test_cfg_that_is_not_json(sae_folder):
    (sae_folder / "cfg.json").write_text('{"d_in": 16, "d_sae": ')
    with pytest.raises(CheckpointError, match="not valid JSON") as exc:
        load_checkpoint(sae_folder)
    assert "cfg.json" in _one_line(exc)


def test_cfg_that_lacks_fields(sae_folder):
    cfg = json.loads((sae_folder / "cfg.json").read_text())
    del cfg["d_sae"]
    (sae_folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lacks required field.*'d_sae'"):
        load_checkpoint(sae_folder)


def test_cfg_with_unknown_architecture(sae_folder):
    cfg = json.loads((sae_folder / "cfg.json").read_text())
    cfg["architecture"] = "quantum"
    (sae_folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cannot be read as a SAELens config"):
        load_checkpoint(sae_folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(sae_folder, bad):
    weights = sae_folder / "sae_weights.safetensors"
    state = load_file(weights)
    state["W_dec"][3, 5] = bad
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="W_dec holds .*(NaN|Inf)") as exc:
        load_checkpoint(sae_folder)
    assert "earlier checkpoint" in _one_line(exc)


class _Exploit:
    """Unpickling this would create a file: a stand-in for code a malicious checkpoint runs."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "ae.pt"
    torch.save({"W_enc": torch.zeros(2, 2), "payload": _Exploit(str(target))}, path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling") as exc:
        load_torch_file(path)
    assert "refuses" in _one_line(exc)
    assert not target.exists()


def test_truncated_pt_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"W": torch.randn(8, 8)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_torch_file(path)


def test_registry_refuses_duplicates_and_lists_names():
    registry: Registry[int] = Registry("thing")
    registry.register("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("alpha", 2)
    with pytest.raises(Exception, match="choose from alpha.*Did you mean 'alpha'"):
        registry.get("alpah")


def test_sparsify_cfg_without_d_in(tmp_path):
    folder = tmp_path / "layers.0"
    folder.mkdir()
    save_file({"encoder.weight": torch.zeros(8, 4), "encoder.bias": torch.zeros(8)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text('{"k": 2}')
    with pytest.raises(CheckpointError, match="lacks required field.*'d_in'"):
        load_checkpoint(folder)


def test_sparsify_weights_missing_tensors(tmp_path):
    folder = tmp_path / "layers.0"
    folder.mkdir()
    save_file({"encoder.weight": torch.zeros(8, 4), "encoder.bias": torch.zeros(8)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text('{"k": 2, "d_in": 4}')
    with pytest.raises(CheckpointError, match="lacks tensor\\(s\\) W_dec, b_dec"):
        load_checkpoint(folder)


def test_truncated_npz(tmp_path):
    import numpy as np

    np.savez(tmp_path / "params.npz", W_enc=np.zeros((4, 8), dtype=np.float32))
    data = (tmp_path / "params.npz").read_bytes()
    (tmp_path / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "params.npz")


def test_llama_scope_without_dataset_norm(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "hyperparams.json").write_text('{"d_model": 4, "hook_point_in": "blocks.0.hook_resid_post"}')
    weights = {"encoder.weight": torch.ones(8, 4), "encoder.bias": torch.zeros(8), "decoder.weight": torch.ones(4, 8)}
    save_file(weights, tmp_path / "checkpoints" / "final.safetensors")
    with pytest.raises(CheckpointError, match="dataset_average_activation_norm"):
        load_checkpoint(tmp_path)


def test_dictionary_learning_config_that_disagrees_with_the_weights(tmp_path):
    state = {"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.zeros(8), "decoder.weight": torch.randn(4, 8)}
    torch.save({**state, "bias": torch.zeros(4)}, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text('{"trainer": {"dict_class": "AutoEncoder", "dict_size": 16}}')
    with pytest.raises(Exception, match="dict_size is 16 but ae.pt holds 8"):
        load_checkpoint(tmp_path)
