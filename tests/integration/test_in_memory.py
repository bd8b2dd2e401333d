"""SAEs that exist only in memory are scored from Python with the numbers of the same weights saved and
evaluated from the command line: a sae_lens SAE, and a home-grown BaseSAE-style module."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import saehealth
from saehealth.cli import main
from saehealth.result import RESULT_FILE

HOOK = "blocks.0.hook_resid_post"  # hidden_states[1] in the home-grown YAML
TOKENS = 2048
OPTIONS = {"n_tokens": TOKENS, "skip": ("absorption",)}


class HomeGrownTopK(torch.nn.Module):
    """A BaseSAE-style TopK SAE (the seed's layout: pre_bias, latent_bias, encoder/decoder nn.Linear)."""

    def __init__(self, d_in: int, d_sae: int, k: int):
        super().__init__()
        self.k = k
        self.pre_bias = torch.nn.Parameter(torch.randn(d_in) * 0.1)
        self.latent_bias = torch.nn.Parameter(torch.randn(d_sae) * 0.1)
        self.encoder = torch.nn.Linear(d_in, d_sae, bias=False)
        self.decoder = torch.nn.Linear(d_sae, d_in, bias=False)

    def encode(self, x):
        pre = F.relu(self.encoder(x - self.pre_bias) + self.latent_bias)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, index, values)

    def decode(self, z):
        return self.decoder(z) + self.pre_bias


def _cli_metrics(path, out, *extra) -> dict:
    main(["eval", "--sae-path", str(path), "--tokens", str(TOKENS), "--skip", "absorption", "--out", str(out)]
         + ["--quiet", *extra])  # fmt: skip
    return json.loads((out / RESULT_FILE).read_text())["metrics"]


def _assert_same(python: dict, cli: dict) -> None:
    assert python.keys() == cli.keys()
    for key, value in cli.items():
        if value is None:
            assert python[key] is None, key
        else:
            assert python[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key


def test_sae_lens_object_scores_like_its_saved_checkpoint(tmp_path, builtin_model):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=128, d_sae=256)
    cfg.metadata.model_name, cfg.metadata.hook_name = saehealth.BUILTIN_MODEL, HOOK
    sae = StandardSAE(cfg)
    result = saehealth.evaluate(sae=sae, model=builtin_model, **OPTIONS)
    assert not list(tmp_path.iterdir())  # nothing written without out=
    sae.save_model(tmp_path / "saved")
    _assert_same(result.metrics, _cli_metrics(tmp_path / "saved", tmp_path / "out"))
    assert result.metrics["decoder_redundancy"] is not None  # geometry from the object's W_dec


def test_home_grown_module_scores_like_its_saved_checkpoint(tmp_path, builtin_model):
    torch.manual_seed(2)
    module = HomeGrownTopK(128, 256, k=16)
    result = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, **OPTIONS)
    assert result.sae.architecture == "HomeGrownTopK" and result.sae.d_sae == 256
    assert module.training  # scoring's eval mode is undone
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({k: v.to(torch.bfloat16) for k, v in module.state_dict().items()}, folder / "TopKSAE_1.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {
        "type": "TopKSAE", "hidden_size": 128, "latent_size": 256, "k": 16, "layer": 1,
        "language_model_path": saehealth.BUILTIN_MODEL}}))  # fmt: skip
    # The saved weights are bfloat16: the in-memory module is rounded the same way for the comparison.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    result = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, **OPTIONS)
    _assert_same(result.metrics, _cli_metrics(folder, tmp_path / "out", "--dataset", saehealth.BUILTIN_DATASET))


def test_a_module_without_decoder_matrix_has_geometry_null_with_reason(builtin_model):
    class Opaque(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Parameter(torch.randn(128, 64) * 0.1)

        def encode(self, x):
            return F.relu(x @ self.inner)

        def decode(self, z):
            return z @ self.inner.T

    result = saehealth.evaluate(sae=Opaque(), model=builtin_model, hook=HOOK, **OPTIONS)
    assert result.metrics["explained_variance"] is not None
    assert result.metrics["decoder_redundancy"] is None
    assert "decoder matrix" in result.not_measured["decoder_redundancy"]


def test_out_writes_and_reuses_only_for_the_same_weights(tmp_path, builtin_model):
    torch.manual_seed(3)
    module = HomeGrownTopK(128, 64, k=8)
    out = tmp_path / "out"
    first = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, out=out, **OPTIONS)
    assert (out / RESULT_FILE).is_file()
    again = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, out=out, **OPTIONS)
    assert again.provenance.started_at == first.provenance.started_at  # reused
    with torch.no_grad():
        module.decoder.weight.mul_(0.5)
    changed = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, out=out, **OPTIONS)
    assert changed.metrics["l2_ratio"] != first.metrics["l2_ratio"]


def test_rendering_functions(tmp_path, builtin_model):
    from rich.console import Console

    torch.manual_seed(4)
    result = saehealth.evaluate(sae=HomeGrownTopK(128, 64, k=8), model=builtin_model, hook=HOOK, **OPTIONS)
    console = Console(record=True, width=100)
    saehealth.show(result, console=console)
    assert "Health assessment" in console.export_text()
    folder = saehealth.write_report(result, tmp_path / "report")
    assert (folder / "report.md").is_file() and (folder / "report.html").is_file()


def test_compare_objects_and_paths_in_one_pass(tmp_path, builtin_model, monkeypatch):
    from saehealth.compare import compare

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    a, b = HomeGrownTopK(128, 64, k=8), HomeGrownTopK(128, 64, k=4)
    alone = saehealth.evaluate(sae=a, model=builtin_model, hook=HOOK, **OPTIONS)
    comparison = compare({"a": a, "b": b}, model=builtin_model, hook=HOOK, **OPTIONS)
    assert [entry.name for entry in comparison.entries] == ["a", "b"]
    assert not list(tmp_path.iterdir())  # nothing written without out=
    _assert_same(comparison.entries[0].result.metrics, alone.metrics)  # the shared pass gives the same numbers
    assert comparison.entries[1].result.metrics["l0"] <= 4


def test_a_bfloat16_module_runs_in_its_own_dtype(builtin_model):
    torch.manual_seed(6)
    module = HomeGrownTopK(128, 64, k=8).to(torch.bfloat16)
    result = saehealth.evaluate(sae=module, model=builtin_model, hook=HOOK, **OPTIONS)
    assert all(p.dtype == torch.bfloat16 for p in module.parameters())  # wrapped, not cast or copied
    assert result.metrics["l0"] == pytest.approx(8.0)
