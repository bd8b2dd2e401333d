"""The manifest is untrusted data (issue 18): `read_manifest` turns a `.saehealth.json` into a checked value or
refuses it, and the commits that replace and delete never leave the folder nor follow a link, even when the
folder changes under them after the check."""

from __future__ import annotations

import json
import os

import pytest

from saehealth.errors import OutputError
from saehealth.manifest import MAX_MANIFEST_BYTES, read_manifest
from saehealth.output import MANIFEST, check_output_folder, staged


def _write(folder, data) -> None:
    folder.mkdir(exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / MANIFEST).write_text(text)


def _manifest(entries, kind="result", **extra) -> dict:
    return {"saehealth_manifest": 1, "kind": kind, "entries": entries, **extra}


def test_a_manifest_saehealth_writes_reads_back_as_files_and_folders(tmp_path):
    _write(tmp_path / "res", _manifest(["plots/", "plots/a.png", "result.json"]))
    manifest = read_manifest(tmp_path / "res")
    assert manifest.kind == "result"
    assert manifest.files == {"plots/a.png", "result.json"} and manifest.folders == {"plots"}
    assert manifest.entries == ["plots/", "plots/a.png", "result.json"]
    assert manifest.top_names() == {"plots", "result.json"}
    assert read_manifest(tmp_path) is None  # no manifest: None


@pytest.mark.parametrize(
    "data",
    [
        _manifest(["../x"]),
        _manifest(["/etc/passwd"]),
        _manifest(["a/../../x"]),
        _manifest(["./x"]),
        _manifest(["a//b"]),
        _manifest(["a\\..\\x"]),
        _manifest(["x\x00y"]),
        _manifest(["x\x1b[2Jy"]),
        _manifest(["\ud800"]),
        _manifest([""]),
        _manifest(["/"]),
        _manifest([".."]),
        _manifest(["../"]),
        _manifest(["x" * 256]),
        _manifest(["/".join("d" * 9)]),
        _manifest(["a", "a/"]),
        _manifest(["plots/a.png"]),  # its folder is not listed
        _manifest([MANIFEST]),
        _manifest([["nested"]]),
        _manifest("result.json"),
        _manifest([f"f{i}" for i in range(100_001)]),
        _manifest([], kind="home"),
        {"kind": "result", "entries": []},  # no format
        _manifest([], saehealth_manifest=2),
        [],
        "not json",
        "[" * 100_000,
    ],
    ids=lambda d: repr(d)[:40],
)
def test_a_forged_manifest_is_refused(data, tmp_path):
    _write(tmp_path / "res", data)
    with pytest.raises(OutputError, match="not a saehealth manifest"):
        read_manifest(tmp_path / "res")
    with pytest.raises(OutputError, match="not a saehealth manifest"):
        check_output_folder(tmp_path / "res", "result")


def test_a_manifest_that_is_not_a_regular_file_of_a_manifests_size_is_refused(tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / MANIFEST).mkdir()  # a folder named like the manifest
    with pytest.raises(OutputError, match="not a saehealth manifest"):
        read_manifest(folder)
    (folder / MANIFEST).rmdir()
    real = tmp_path / "real.json"
    real.write_text(json.dumps(_manifest([])))
    (folder / MANIFEST).symlink_to(real)  # a link, even to a valid manifest
    with pytest.raises(OutputError, match="not a saehealth manifest"):
        read_manifest(folder)
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(OutputError, match="not a saehealth manifest"):
        read_manifest(folder)


def _own(folder, files=("report.md", "plots/a.png", "result.json")):
    with staged(folder, "result") as staging:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(rel)
    return folder


def _outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "thesis.tex").write_text("mine")
    return outside


def test_a_link_that_appears_after_the_check_is_never_replaced_through(tmp_path, monkeypatch):
    outside = _outside(tmp_path)
    folder = _own(tmp_path / "res")
    monkeypatch.chdir(folder)  # the current folder: updated in place, entry by entry
    with pytest.raises(OutputError, match="changed while saehealth was writing"):
        with staged(folder, "result") as staging:
            (staging / "report.md").write_text("new")
            (folder / "report.md").unlink()
            (folder / "report.md").symlink_to(outside / "thesis.tex")
    assert (outside / "thesis.tex").read_text() == "mine"


def test_stale_output_that_became_a_link_is_unlinked_never_followed(tmp_path, monkeypatch):
    outside = _outside(tmp_path)
    folder = _own(tmp_path / "res")
    monkeypatch.chdir(folder)
    with staged(folder, "result") as staging:  # plots/ is not written again: stale, removed
        (staging / "result.json").write_text("{}")
        (folder / "plots" / "a.png").unlink()
        (folder / "plots").rmdir()
        (folder / "plots").symlink_to(outside)
    assert not os.path.lexists(folder / "plots")
    assert (outside / "thesis.tex").read_text() == "mine"


def test_a_swap_puts_everything_back_when_a_link_appeared(tmp_path):
    outside = _outside(tmp_path)
    folder = _own(tmp_path / "res")
    with pytest.raises(OutputError, match="changed while saehealth was writing"):
        with staged(folder, "result") as staging:
            (staging / "result.json").write_text("{}")
            (folder / "mine").symlink_to(outside)
    assert (folder / "mine").is_symlink() and (folder / "report.md").read_text() == "report.md"
    assert (outside / "thesis.tex").read_text() == "mine"


def test_kept_names_must_be_plain_relative_names(tmp_path):
    folder = _own(tmp_path / "res")
    with pytest.raises(ValueError, match="not a relative file name"):
        with staged(folder, "result", keep=["../outside/thesis.tex"]):
            pass
