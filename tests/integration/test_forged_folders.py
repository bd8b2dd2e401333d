"""Forged and hostile folders given to every command (issue 18): a `.saehealth.json` that lists files outside its
folder, links pointing out, a `--saebench-out` that holds someone else's file, and the inputs that used to end in
a traceback. Each case: exit code 1, one line naming the problem, and nothing written or deleted anywhere under
the test's folder, which holds a sibling file beside every forged folder (`_snapshot` covers it all).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from saehealth.cli import main
from saehealth.output import MANIFEST
from tests.conftest import shifted_identity_sae
from tests.integration.test_hostile_input import FAST, _eval, _result, _sae, _snapshot

CASES: list = []


def case(expected: str):
    """Register a case: a function (work folder) -> command line, and a text the error line must contain."""

    def register(build: Callable[[Path], list[str]]):
        CASES.append(pytest.param(build, expected, id=build.__name__))
        return build

    return register


def _forge(folder: Path, entries: list, kind: str = "result") -> Path:
    """`folder` (made if missing) with a manifest of `kind` listing `entries`, and a sibling file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"saehealth_manifest": 1, "kind": kind, "entries": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (folder.parent / "sibling.txt").write_text("a file beside the folder: it must survive\n")
    return folder


def _forged_result(work: Path, *entries) -> Path:
    """A saved result (work/res/result.json) whose manifest lists `entries` besides its own file."""
    result = _result(work, lambda d: None)
    _forge(result.parent, ["result.json", *entries])
    return result


NOT_OURS = "not a saehealth manifest"
SB = ["--tokens", "256", "--skip", "absorption"]  # SAEBench's core file needs the geometry


# ---------------------------------------------------------------------------------------------- forged manifests
@case(NOT_OURS)
def report_inside_a_result_whose_manifest_lists_the_parent(work):
    result = _forged_result(work, "../sibling.txt")
    os.chdir(result.parent)  # run inside it: the folder is updated in place (restored by the fixture)
    return ["report", "result.json"]


@case(NOT_OURS)
def report_of_a_manifest_listing_the_parent_folder_itself(work):
    return ["report", str(_forged_result(work, "../", "..")), "--out", str(work / "res")]


@case(NOT_OURS)
def eval_force_into_the_current_folder_whose_manifest_lists_an_absolute_path(work):
    sae = _sae(work)
    folder = _forge(work / "here", ["result.json", str(work)])
    os.chdir(folder)
    return _eval(sae, "--out", ".", "--force", *FAST)


@case(NOT_OURS)
def compare_into_a_comparison_whose_manifest_lists_its_parent(work):
    _forge(work / "parent" / "cmp", ["../", "../sibling.txt"], kind="comparison")
    (work / "parent" / "thesis.tex").write_text("\\documentclass{article}\n")
    return ["compare", str(_sae(work)), "--out", str(work / "parent" / "cmp"), *FAST]


@pytest.mark.parametrize(
    "entry",
    [
        "plots/../../sibling.txt",  # '..' after normalisation
        "./result.json",
        "plots//x.png",
        "plots\\..\\..\\sibling.txt",
        "a\x00b",
        "line\nbreak",
        "\ud800",  # a lone surrogate: no filesystem name
        "",
        "x" * 300,  # longer than any file name
        "/".join(["d"] * 20),  # deeper than saehealth writes
        "plots/x.png",  # under a folder the manifest does not list
        ".saehealth.json",  # the manifest listing itself
        7,
        None,
    ],
)
def test_a_manifest_entry_that_is_not_a_plain_name_inside_makes_the_folder_not_ours(
    entry, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = _forged_result(work, entry)
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(result)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and NOT_OURS in err, err
    assert _snapshot(tmp_path) == before


@case(NOT_OURS)
def manifest_listing_one_name_as_a_file_and_a_folder(work):
    return ["report", str(_forged_result(work, "plots", "plots/"))]


@case(NOT_OURS)
def manifest_with_too_many_entries(work):
    return ["report", str(_forged_result(work, *(f"f{i}" for i in range(100_001))))]


@case(NOT_OURS)
def manifest_that_is_a_link_to_a_real_manifest(work):
    result = _forged_result(work)
    real = work / "real_manifest.json"
    (result.parent / MANIFEST).rename(real)
    (result.parent / MANIFEST).symlink_to(real)
    return ["report", str(result)]


@case(NOT_OURS)
def manifest_that_is_a_fifo(work):
    result = _result(work, lambda d: None)
    os.mkfifo(result.parent / MANIFEST)  # reading it would block for ever
    return ["report", str(result)]


@case("did not write (plots@)")
def a_listed_folder_that_is_a_link_out_of_the_folder(work):
    (work / "elsewhere").mkdir()
    (work / "elsewhere" / "keep.png").write_text("the user's picture\n")
    result = _forged_result(work, "plots/", "plots/keep.png")
    (result.parent / "plots").symlink_to(work / "elsewhere")
    return ["report", str(result)]


@case("did not write (report.md@)")
def a_listed_file_that_is_a_link_out_of_the_folder(work):
    (work / "thesis.md").write_text("# my thesis\n")
    result = _forged_result(work, "report.md")
    (result.parent / "report.md").symlink_to(work / "thesis.md")
    os.chdir(result.parent)  # in place: the old code unlinked or replaced what the manifest listed
    return ["report", "result.json"]


@case("did not write (plots@)")
def a_symlinked_plots_folder_updated_in_place(work):
    (work / "elsewhere").mkdir()
    result = _forged_result(work, "plots")
    (result.parent / "plots").symlink_to(work / "elsewhere")
    os.chdir(result.parent)
    return ["report", "result.json"]


@case("did not write (queue)")
def a_listed_name_that_is_a_fifo(work):
    result = _forged_result(work, "queue")
    os.mkfifo(result.parent / "queue")
    return ["report", str(result)]


@case("did not write")
def a_user_file_named_like_a_staging_folder(work):
    result = _forged_result(work)
    (result.parent / ".res.saehealth-staging-notours").write_text("mine\n")
    return ["report", str(result)]


@case("did not write (member/)")
def a_member_result_of_a_comparison_with_a_forged_manifest(work):
    cmp = _forge(work / "cmp", [], kind="comparison")
    _forge(cmp / "member", ["result.json", "../../sibling.txt"])
    (cmp / "sibling.txt").rename(work / "cmp_sibling.txt")
    (cmp / "member" / "result.json").write_text("{}")
    return ["compare", str(_sae(work)), "--out", str(cmp), *FAST]


@case("not a saehealth manifest")
def a_checkpoint_folder_whose_manifest_lists_outside(work):
    _forge(work / "ckpt", ["../sibling.txt"], kind="checkpoint")
    return ["train", "demo", "--output_path", str(work / "ckpt"), "--training_tokens", "4096"]


@case("not a saehealth manifest")
def a_saebench_folder_whose_manifest_lists_outside(work):
    _forge(work / "eval_results", ["../sibling.txt"], kind="saebench")
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", str(work / "eval_results"), *SB)


# ---------------------------------------------------------------------------------------------- forged details
def _forged_details(work: Path, **arrays) -> Path:
    import torch
    from safetensors.torch import save_file

    result = _result(work, lambda d: None)  # d_sae 1024
    tensors = {"firing_counts": torch.ones(1024, dtype=torch.int64), **arrays}
    save_file(tensors, str(result.parent / "result.details.safetensors"))
    return result


@case("does not belong to its result.json")
def details_shorter_than_the_sae(work):
    import torch

    return ["report", str(_forged_details(work, max_decoder_cosine=torch.zeros(3))), "--out", str(work / "rep")]


@case("names latents that do not exist")
def details_naming_latents_beyond_the_sae(work):
    import torch

    nearest = torch.full((1024,), 10**6, dtype=torch.int64)
    return ["report", str(_forged_details(work, nearest_decoder_latent=nearest)), "--out", str(work / "rep")]


# ---------------------------------------------------------------------------------------------- --saebench-out
@case("filesystem root")
def saebench_out_is_the_root(work):
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", "/", *SB)


@case("is a file")
def saebench_out_is_a_file(work):
    (work / "eval_results").write_text("mine\n")
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", str(work / "eval_results"), *SB)


@case("saehealth did not write")
def saebench_out_holds_a_colleagues_file_of_the_same_name(work):
    core = work / "eval_results" / "core"
    core.mkdir(parents=True)
    (core / "res_custom_sae_eval_results.json").write_text('{"a colleague": "result"}\n')
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", str(work / "eval_results"), *SB)


@case("saehealth did not write")
def saebench_out_core_is_a_link_out(work):
    (work / "elsewhere").mkdir()
    (work / "eval_results").mkdir()
    (work / "eval_results" / "core").symlink_to(work / "elsewhere")
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", str(work / "eval_results"), *SB)


@case("inside the output folder")
def saebench_out_inside_the_result_folder(work):
    return _eval(_sae(work), "--out", str(work / "res"), "--saebench-out", str(work / "res" / "sb"), *SB)


@case("inside the output folder")
def saebench_out_inside_the_comparison_folder(work):
    return ["compare", str(_sae(work)), "--out", str(work / "cmp"), "--saebench-out", str(work / "cmp"), *SB]


@case("saehealth did not write")
def compare_saebench_out_holds_a_file_named_after_a_member(work):
    core = work / "eval_results" / "absorption"
    core.mkdir(parents=True)
    (core / "sae_custom_sae_eval_results.json").write_text("{}\n")
    sae = _sae(work)
    return ["compare", str(sae), "--out", str(work / "cmp"), "--saebench-out", str(work / "eval_results"), *SB]


# ---------------------------------------------------------------------------------------------- tracebacks
@case("--tokens must be at most")
def tokens_beyond_any_dataset(work):
    return _eval(_sae(work), "--tokens", str(10**30))


@case("--examples must be at most")
def examples_a_billion(work):
    return _eval(_sae(work), "--examples", "1000000000")


@case("cannot be created")
def out_under_proc(work):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    return _eval(_sae(work), "--out", "/proc/saehealth-x", *FAST)


@case("not minSAE's metadata")
def minsae_metadata_that_is_a_list(work):
    import torch
    from safetensors.torch import save_file

    cache = work / "acts"
    cache.mkdir()
    save_file({"activations": torch.zeros(64, 128)}, str(cache / "shard_00000.safetensors"))
    (cache / "metadata.json").write_text("[1, 2, 3]")
    return _eval(_sae(work), "--activations", str(cache), "--out", str(work / "res"))


# ---------------------------------------------------------------------------------------------- the test
@pytest.mark.parametrize(("build", "expected"), CASES)
def test_forged_folder_is_one_line_and_nothing_is_touched(build, expected, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = build(work)
    before = _snapshot(tmp_path)
    root_before = set(os.listdir("/"))

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()

    assert exit_info.value.code == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert expected.lower() in err.lower(), err
    assert _snapshot(tmp_path) == before, "files were written or deleted"
    assert set(os.listdir("/")) == root_before


# ---------------------------------------------------------------------------------------------- runs that crashed
def _run(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `saehealth ARGS`."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip()


def _forge_latents(folder: Path, change_arrays=None, **metadata) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "result.latents.safetensors"
    with safe_open(str(path), "pt") as f:
        info, arrays = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    if change_arrays is not None:
        change_arrays(arrays)
    save_file(arrays, str(path), metadata={**info, **metadata})


def test_a_crafted_latents_file_is_one_line_in_latents_and_a_note_in_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "res"
    assert _run(_eval(_sae(tmp_path), "--out", str(res), *FAST, "--quiet"), capsys)[0] == 0
    _forge_latents(res, lambda a: a["top_position"].fill_(10**6))
    code, err = _run(["latents", str(res), "--id", "3"], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "beyond the" in err, err
    code, err = _run(["report", str(res), "--quiet"], capsys)  # the report is written, without the examples
    assert code == 0, err
    assert "beyond the" in (res / "report.md").read_text()
    _forge_latents(res, window="ten")
    code, err = _run(["latents", str(res)], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "no usable window" in err, err
    code, err = _run(["report", str(res / "result.json"), "--out", str(tmp_path / "rep"), "--quiet"], capsys)
    assert code == 0 and "no usable window" in (tmp_path / "rep" / "report.md").read_text(), err


def test_an_sae_of_one_latent_is_evaluated(tmp_path, monkeypatch, capsys):
    from tests.conftest import write_standard_sae

    monkeypatch.chdir(tmp_path)
    torch = pytest.importorskip("torch")
    sae = write_standard_sae(
        tmp_path / "one", torch.randn(128, 1), torch.zeros(1), torch.randn(1, 128), torch.zeros(128),
        hook_name="blocks.0.hook_resid_post",
    )  # fmt: skip
    code, err = _run(_eval(sae, "--out", str(tmp_path / "res"), *FAST, "--quiet"), capsys)
    assert code == 0, err
    assert (tmp_path / "res" / "result.details.safetensors").is_file()
    assert _run(["latents", str(tmp_path / "res"), "--id", "0"], capsys)[0] == 0


def test_a_checkpoint_folder_named_like_the_manifest_is_compared(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sae = shifted_identity_sae(tmp_path / MANIFEST, 128, hook_name="blocks.0.hook_resid_post")
    other = _sae(tmp_path)
    code, err = _run(["compare", str(sae), str(other), "--out", str(tmp_path / "cmp"), *FAST, "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "cmp" / MANIFEST).is_file()
    assert (tmp_path / "cmp" / "saehealth.json-sae" / "result.json").is_file()  # not hidden, not a .json


def test_saebench_out_keeps_the_files_it_did_not_write(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval_results"
    (out / "core").mkdir(parents=True)
    (out / "core" / "gemma-scope_layer_3_eval_results.json").write_text('{"SAEBench": "its own"}\n')
    sae = _sae(tmp_path)
    args = _eval(sae, "--out", str(tmp_path / "res"), "--saebench-out", str(out), *SB, "--quiet")
    assert _run(args, capsys)[0] == 0
    assert _run([*args, "--force"], capsys)[0] == 0  # its own file: replaced
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "saebench" and "core/res_custom_sae_eval_results.json" in manifest["entries"]
    assert (out / "core" / "gemma-scope_layer_3_eval_results.json").read_text() == '{"SAEBench": "its own"}\n'
