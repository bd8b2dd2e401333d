"""`saehealth inspect` prints what a checkpoint was detected as; bad paths are one red line and exit code 1."""

from __future__ import annotations

import os

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from saehealth.cli import main
from saehealth.errors import CheckpointError
from saehealth.loading import load_checkpoint


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_prints_library_format_sizes_hook_and_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=16, d_sae=48, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny")
        )
    )
    sae.save_model(tmp_path)
    (tmp_path / "runner_cfg.json").write_text('{"training_tokens": 12345, "sae": {"l1_coefficient": 2.0}}')
    code, out, err = _run(capsys, "inspect", str(tmp_path))
    assert code == 0, err
    for expected in ("sae_lens", "standard", "StandardSAE", "48", "blocks.1.hook_resid_post", "tiny", "12345",
                     "l1_coefficient"):  # fmt: skip
        assert expected in out


def test_inspect_missing_path_is_one_line_and_exit_1(tmp_path, capsys):
    code, out, err = _run(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 1
    assert "does not exist" in err
    assert "Traceback" not in err


def test_inspect_unknown_format_lists_the_valid_ones(tmp_path, capsys):
    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(tmp_path)
    code, _, err = _run(capsys, "inspect", str(tmp_path), "--format", "sparsfy")
    assert code == 1
    assert "sparsify" in err


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unknown_pt_file_that_needs_unpickling_is_refused_by_name(tmp_path):
    torch.save({"weights": torch.zeros(2), "extra": _Payload()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(tmp_path / "model.pt")
    torch.save({"pre_bias": torch.zeros(2), "extra": _Payload()}, tmp_path / "ae.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(tmp_path / "ae.pt")
