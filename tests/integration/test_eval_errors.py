"""Bad input to `saehealth eval`: one line naming the problem and the fix, exit 1, nothing written."""

from __future__ import annotations

import pytest
import torch

from saehealth.cli import main
from tests.conftest import shifted_identity_sae, write_standard_sae


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err.strip()


def _sae(tmp_path, **kwargs):
    return shifted_identity_sae(
        tmp_path / "sae", kwargs.pop("d_in", 128), hook_name="blocks.0.hook_resid_post", **kwargs
    )


def _assert_one_line_error(code, err, pattern, out):
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    assert not (out / "result.json").exists()


def test_missing_path(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(tmp_path / "nothing"), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "does not exist", out)


def test_folder_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(tmp_path / "empty"), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "no", out)


def test_truncated_weights(tmp_path, capsys):
    path = _sae(tmp_path)
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "safetensors", out)


def test_cfg_json_that_is_not_json(tmp_path, capsys):
    path = _sae(tmp_path)
    (path / "cfg.json").write_text("{not json")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "json", out)


def test_width_mismatch(tmp_path, capsys):
    path = shifted_identity_sae(tmp_path / "sae", 64, hook_name="blocks.0.hook_resid_post")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "d_in is 64", out)


@pytest.mark.parametrize(
    ("hook", "head", "message"),
    [("blocks.1.attn.hook_z", 7, "has 4 heads"), ("blocks.0.hook_resid_post", 1, "has no heads")],
)
def test_attention_head_the_hook_lacks(tmp_path, capsys, hook, head, message):
    path = shifted_identity_sae(tmp_path / "sae", 32, hook_name=hook, hook_head_index=head)
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, message, out)


def test_hook_the_model_lacks(tmp_path, capsys):
    path = _sae(tmp_path)
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--hook", "blocks.7.hook_resid_post", "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "did you mean", out)


def test_nan_weights(tmp_path, capsys):
    W = torch.eye(128)
    W[0, 0] = float("nan")
    path = write_standard_sae(
        tmp_path / "sae", W, torch.zeros(128), torch.eye(128), torch.zeros(128), hook_name="blocks.0.hook_resid_post"
    )
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "nan", out)


def test_unknown_model(tmp_path, capsys):
    path = _sae(tmp_path)
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--model", "gpt-7-turbo", "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "unknown model", out)


def test_empty_dataset(tmp_path, capsys):
    path = _sae(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--dataset", str(empty), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "dataset", out)


def test_dataset_too_short_for_one_sequence(tmp_path, capsys):
    path = _sae(tmp_path)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just a few words\n")
    out = tmp_path / "out"
    code, err = _run(["--sae-path", str(path), "--dataset", str(tiny), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "no sequence", out)


def test_debug_shows_the_traceback(tmp_path):
    from saehealth.errors import SaeHealthError

    with pytest.raises(SaeHealthError):
        main(["--debug", "eval", "--sae-path", str(tmp_path / "nothing")])
