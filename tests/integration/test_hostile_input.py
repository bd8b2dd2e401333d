"""Hostile but realistic input to every command: exit code 1, one line naming the problem and the fix, no
traceback, and nothing written or deleted anywhere under the working folder.

Each case builds its input in a fresh working folder and returns the command line; most fail before any
model runs. The kinds follow issue 10: checkpoint configs, weights, models, datasets, options, output
folders, saved results and training output folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saehealth.cli import main
from saehealth.output import MANIFEST
from tests.conftest import shifted_identity_sae

RESID = "blocks.0.hook_resid_post"
FAST = ["--tokens", "256", "--skip", "absorption", "--skip", "geometry"]

CASES: list = []


def case(expected: str, *, marks=()):
    """Register a case: a function (work folder) -> command line, and a text the error line must contain."""

    def register(build: Callable[[Path], list[str]]):
        CASES.append(pytest.param(build, expected, id=build.__name__, marks=marks))
        return build

    return register


# ---------------------------------------------------------------------------------------------- builders
def _sae(work: Path) -> Path:
    return shifted_identity_sae(work / "sae", 128, hook_name=RESID)


def _eval(sae: Path, *extra: str) -> list[str]:
    return ["eval", "--sae-path", str(sae), *extra]


def _edit_cfg(work: Path, change) -> Path:
    sae = _sae(work)
    cfg = json.loads((sae / "cfg.json").read_text())
    change(cfg)
    (sae / "cfg.json").write_text(json.dumps(cfg))
    return sae


def _edit_weights(work: Path, change) -> Path:
    sae = _sae(work)
    weights = load_file(str(sae / "sae_weights.safetensors"))
    change(weights)
    save_file(weights, str(sae / "sae_weights.safetensors"))
    return sae


def _dataset(work: Path, name: str, content: bytes | str) -> Path:
    path = work / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _result(work: Path, change) -> Path:
    """A saved result.json (a real one's shape, hand-made) after `change`."""
    from tests.unit.report_factory import make_result

    data = make_result().to_dict()
    change(data)
    folder = work / "res"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(data))
    return folder / "result.json"


# ---------------------------------------------------------------------------------------------- checkpoint config
@case("d_sae")
def cfg_negative_d_sae(work):
    return _eval(_edit_cfg(work, lambda c: c.update(d_sae=-5)))


@case("d_sae")
def cfg_string_d_sae(work):
    return _eval(_edit_cfg(work, lambda c: c.update(d_sae="many")))


@case("d_sae")
def cfg_float_d_sae(work):
    return _eval(_edit_cfg(work, lambda c: c.update(d_sae=128.5)))


@case("list")
def cfg_is_a_list(work):
    sae = _sae(work)
    (sae / "cfg.json").write_text("[1, 2, 3]")
    return _eval(sae)


@case("utf-8")
def cfg_invalid_utf8(work):
    sae = _sae(work)
    (sae / "cfg.json").write_bytes(b'{"d_in": 128, "d_sae": 128, "name": "\xff\xfe"}')
    return _eval(sae)


@case("context_size")
def cfg_context_size_string(work):
    return _eval(_edit_cfg(work, lambda c: c["metadata"].update(context_size="long")))


@case("hook_name")
def cfg_hook_name_number(work):
    return _eval(_edit_cfg(work, lambda c: c["metadata"].update(hook_name=7)))


@case("sae[bold]:x:")  # printed as given: no rich markup or emoji codes in an error line
def checkpoint_path_with_markup(work):
    return _eval(work / "sae[bold]:x:")


# ---------------------------------------------------------------------------------------------- weights
@case("W_dec")
def weights_without_W_dec(work):
    return _eval(_edit_weights(work, lambda w: w.pop("W_dec")))


@case("W_extra")
def weights_with_an_unknown_tensor(work):
    return _eval(_edit_weights(work, lambda w: w.update(W_extra=torch.zeros(3))))


@case("W_enc")
def weights_of_the_wrong_shape(work):
    return _eval(_edit_weights(work, lambda w: w.update(W_enc=torch.zeros(64, 128))))


@case("int64")
def weights_that_are_integers(work):
    return _eval(_edit_weights(work, lambda w: w.update({k: v.round().to(torch.int64) for k, v in w.items()})))


# ---------------------------------------------------------------------------------------------- models
class _Pickled:
    """Not a tensor: loading it needs arbitrary unpickling."""


@case("unpickling")
def model_folder_whose_weights_need_unpickling(work):
    model = work / "hf_model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"_name_or_path": "gpt2", "model_type": "gpt2"}))
    torch.save({"weights": _Pickled()}, model / "pytorch_model.bin")
    return _eval(_sae(work), "--model", str(model))


@case("json")
def model_folder_whose_config_is_not_json(work):
    model = work / "my_model"
    model.mkdir()
    (model / "model_config.json").write_text("{n_layers: 2")
    return _eval(_sae(work), "--model", str(model))


# ---------------------------------------------------------------------------------------------- datasets
@case("utf-8")
def dataset_jsonl_invalid_utf8(work):
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", b'{"text": "caf\xe9 au lait"}\n')), *FAST)


@case("vocabulary")
def dataset_token_ids_beyond_the_vocabulary(work):
    rows = [{"tokens": [1] * 127 + [10**6]}] * 4
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", _jsonl(rows))), *FAST)


@case("negative")
def dataset_negative_token_ids(work):
    rows = [{"tokens": [1] * 127 + [-3]}] * 4
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", _jsonl(rows))), *FAST)


@case("whole numbers")
def dataset_float_token_ids(work):
    rows = [{"tokens": [1.5] * 128}] * 4
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", _jsonl(rows))), *FAST)


@case("text")
def dataset_text_column_of_integers(work):
    rows = [{"text": 12345}] * 4
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", _jsonl(rows))), *FAST)


@case("null")
def dataset_some_null_texts(work):
    rows = [{"text": "def f(x): return x " * 50}, {"text": None}] * 4
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.jsonl", _jsonl(rows))), *FAST)


@case("parquet")
def dataset_corrupt_parquet(work):
    return _eval(_sae(work), "--dataset", str(_dataset(work, "d.parquet", b"PAR1" + os.urandom(200))), *FAST)


# ---------------------------------------------------------------------------------------------- options
@case("--seed")
def option_negative_seed(work):
    return _eval(_sae(work), "--seed", "-1")


@case("--seed")
def option_seed_beyond_32_bits(work):
    return _eval(_sae(work), "--seed", str(2**40))


@case("--dtype")
def option_unknown_dtype(work):
    return _eval(_sae(work), "--dtype", "int8")


@case("--device")
def option_device_with_a_bad_index(work):
    return _eval(_sae(work), "--device", "cpu:1")


# ---------------------------------------------------------------------------------------------- output folders
@case("is a file")
def out_is_a_file(work):
    (work / "taken").write_text("my notes\n")
    return _eval(_sae(work), "--out", str(work / "taken"))


@case("is a file")
def out_under_a_file(work):
    (work / "taken").write_text("my notes\n")
    return _eval(_sae(work), "--out", str(work / "taken" / "results"))


@case("filesystem root")
def out_is_the_filesystem_root(work):
    return _eval(_sae(work), "--out", "/")


@case("report.md")
def out_holds_the_users_report(work):
    (work / "mine").mkdir()
    (work / "mine" / "report.md").write_text("# my own report\n")
    return _eval(_sae(work), "--out", str(work / "mine"))


@case("did not write")
def out_is_the_home_folder(work):
    home = work / "home"
    (home / "projects").mkdir(parents=True)
    (home / ".bashrc").write_text("export A=1\n")
    os.environ["HOME"] = str(home)  # restored by the fixture
    return _eval(_sae(work), "--out", "~")


@case("did not write")
def out_is_the_current_folder(work):
    (work / "notes.txt").write_text("mine\n")
    return _eval(_sae(work), "--out", ".")


@case("--force")
def out_holds_a_corrupt_result_of_ours(work):
    folder = work / "res"
    folder.mkdir()
    (folder / "result.json").write_text('{"schema_version": 1, "sae": ')
    (folder / MANIFEST).write_text(json.dumps({"saehealth_manifest": 1, "kind": "result", "entries": ["result.json"]}))
    return _eval(_sae(work), "--out", str(folder))


@case("result.json/")
def out_holds_a_folder_named_result_json(work):
    (work / "res" / "result.json").mkdir(parents=True)
    return _eval(_sae(work), "--out", str(work / "res"))


@case("not a saehealth manifest")
def out_holds_a_broken_manifest(work):
    (work / "res").mkdir()
    (work / "res" / MANIFEST).write_text("[]")
    return _eval(_sae(work), "--out", str(work / "res"))


@case("checkpoint")
def out_is_a_trained_checkpoint(work):
    sae = _sae(work)
    (sae / MANIFEST).write_text(
        json.dumps({"saehealth_manifest": 1, "kind": "checkpoint", "entries": sorted(os.listdir(sae))})
    )
    return _eval(sae, "--out", str(sae))


# ---------------------------------------------------------------------------------------------- saved results
@case("list")
def report_of_a_json_list(work):
    (work / "result.json").write_text("[1, 2]")
    return ["report", str(work / "result.json"), "--out", str(work / "rep")]


@case("not a saehealth result")
def report_of_deeply_nested_json(work):
    (work / "result.json").write_text("[" * 100_000)
    return ["report", str(work / "result.json"), "--out", str(work / "rep")]


@case("metrics.l0")
def report_with_string_metrics(work):
    return ["report", str(_result(work, lambda d: d["metrics"].update(l0="sixty-four"))), "--out", str(work / "rep")]


@case("metrics")
def report_with_null_metrics(work):
    return ["report", str(_result(work, lambda d: d.update(metrics=None))), "--out", str(work / "rep")]


@case("is a file")
def report_out_is_a_file(work):
    (work / "taken.md").write_text("mine\n")
    return ["report", str(_result(work, lambda d: None)), "--out", str(work / "taken.md")]


@case("did not write")
def report_into_a_folder_of_the_users(work):
    result = _result(work, lambda d: None)
    (work / "res" / "notes.txt").write_text("mine\n")
    return ["report", str(result)]


# ---------------------------------------------------------------------------------------------- compare and train
@case("did not write")
def compare_out_holds_the_users_files(work):
    (work / "cmp").mkdir()
    (work / "cmp" / "comparison.md").write_text("# my comparison\n")
    return ["compare", str(_sae(work)), "--out", str(work / "cmp")]


@case("is a file")
def compare_out_is_a_file(work):
    (work / "cmp").write_text("mine\n")
    return ["compare", str(_sae(work)), "--out", str(work / "cmp")]


@case("did not write")
def train_into_a_folder_of_the_users(work):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("\\documentclass{article}\n")
    return ["train", "demo", "--output_path", str(work / "mine"), "--training_tokens", "4096"]


@case("did not write")
def train_into_the_current_folder(work):
    (work / "thesis.tex").write_text("\\documentclass{article}\n")
    return ["train", "demo", "--output_path", ".", "--training_tokens", "4096"]


# ---------------------------------------------------------------------------------------------- the test
def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, size and modification time (the cache folder aside)."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] == "cache":
            continue
        info = path.lstat()
        found[str(rel)] = (path.is_dir(), info.st_size if path.is_file() else None, info.st_mtime_ns)
    return found


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_hostile_input_is_one_line_and_writes_nothing(build, expected, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", os.environ.get("HOME", str(tmp_path)))
    args = build(work)
    before = _snapshot(tmp_path)
    root_before = set(os.listdir("/"))

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()

    assert exit_info.value.code == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    assert expected.lower() in err.lower(), err
    assert _snapshot(tmp_path) == before, "files were written or deleted"
    assert set(os.listdir("/")) == root_before
