"""The output rule: saehealth writes only into folders that are new, empty or its own, replaces them whole, and
leaves nothing behind when writing fails."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from saehealth import folder_swap, output
from saehealth.errors import OutputError
from saehealth.output import MANIFEST, check_output_folder, staged


def _write(staging, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_text(text)


def _own(folder, kind="result", files=None):
    """A folder saehealth wrote, holding `files`."""
    with staged(folder, kind) as staging:
        _write(staging, files or {"result.json": "{}", "plots/a.png": "png"})
    return folder


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _leftovers(root) -> list[str]:
    return [str(p) for p in root.rglob(f"*{output.STAGING_TAG}*")]


# ---------------------------------------------------------------------------------------------- the check
def test_new_and_empty_folders_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "new" / "deeper", "result") == tmp_path / "new" / "deeper"
    assert check_output_folder(tmp_path / "empty", "result") == tmp_path / "empty"
    assert not (tmp_path / "new").exists()  # checking writes nothing


def test_a_folder_written_by_saehealth_is_accepted_for_its_kind_only(tmp_path):
    folder = _own(tmp_path / "res")
    assert check_output_folder(folder, "result") == folder
    with pytest.raises(OutputError, match="holds a saehealth result, not a checkpoint"):
        check_output_folder(folder, "checkpoint")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "notes.txt").write_text("mine"), r"did not write \(notes.txt\)"),
        (lambda p: (p / "sub").mkdir(), r"did not write \(sub/\)"),
        (lambda p: os.symlink("/etc", p / "link"), r"did not write \(link@\)"),
    ],
    ids=["a file", "an empty folder", "a link"],
)
def test_anything_saehealth_did_not_write_is_refused(tmp_path, make, message):
    folder = tmp_path / "out"
    folder.mkdir()
    make(folder)
    with pytest.raises(OutputError, match=message):
        check_output_folder(folder, "result")


def test_a_file_added_to_an_own_folder_makes_it_the_users(tmp_path):
    folder = _own(tmp_path / "res")
    (folder / "plots" / "mine.png").write_text("mine")
    with pytest.raises(OutputError, match="plots/mine.png"):
        check_output_folder(folder, "result")


def test_files_folders_under_files_and_the_root_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file", "result")
    with pytest.raises(OutputError, match="is a file. Give a folder path"):
        check_output_folder(tmp_path / "file" / "sub", "result")
    with pytest.raises(OutputError, match="filesystem root"):
        check_output_folder("/", "result")


def test_a_comparison_folder_may_hold_result_folders(tmp_path):
    cmp = tmp_path / "cmp"
    _own(cmp / "a")
    assert check_output_folder(cmp, "comparison") == cmp  # no manifest yet: only results of its own
    (cmp / "b").mkdir()
    (cmp / "b" / "x.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"\(b/\)"):
        check_output_folder(cmp, "comparison")


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_folder("~/reports/x", "result") == tmp_path / "reports" / "x"


# ---------------------------------------------------------------------------------------------- writing
def test_a_new_folder_gets_its_files_and_a_manifest(tmp_path):
    folder = _own(tmp_path / "a" / "b", files={"result.json": "{}", "plots/x.png": "p"})
    assert (folder / "result.json").read_text() == "{}"
    assert _manifest(folder)["kind"] == "result"
    assert _manifest(folder)["entries"] == ["plots/", "plots/x.png", "result.json"]
    assert _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


def test_an_own_folder_is_replaced_whole(tmp_path):
    folder = _own(tmp_path / "res", files={"result.json": "old", "plots/stale.png": "old"})
    inode = folder.stat().st_ino
    _own(folder, files={"result.json": "new", "report.md": "new"})
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "report.md", "result.json"]
    assert (folder / "result.json").read_text() == "new"
    assert folder.stat().st_ino != inode  # swapped in, not written file by file
    assert _leftovers(tmp_path) == []


def test_kept_files_are_carried_over(tmp_path):
    folder = _own(tmp_path / "res", files={"result.json": "kept", "report.md": "old"})
    with staged(folder, "result", keep=("result.json",)) as staging:
        (staging / "report.md").write_text("new")
    assert (folder / "result.json").read_text() == "kept"
    assert (folder / "report.md").read_text() == "new"


@pytest.mark.parametrize("kind_of_failure", ["crash", "interrupt", "disk full"])
def test_a_failure_leaves_everything_as_it_was(tmp_path, kind_of_failure):
    folder = _own(tmp_path / "res", files={"result.json": "old"})
    error = {
        "crash": RuntimeError("boom"),
        "interrupt": KeyboardInterrupt(),
        "disk full": OSError(errno.ENOSPC, "No space left on device"),
    }[kind_of_failure]
    expected = OutputError if kind_of_failure == "disk full" else type(error)
    with pytest.raises(expected) as info, staged(folder, "result") as staging:
        (staging / "result.json").write_text("half")
        raise error
    assert (folder / "result.json").read_text() == "old"
    assert _leftovers(tmp_path) == []
    if expected is OutputError:
        assert "no space left on device" in str(info.value) and "\n" not in str(info.value)


def test_a_failure_removes_the_parent_folders_it_created(tmp_path):
    with pytest.raises(OutputError), staged(tmp_path / "new" / "deeper" / "res", "result"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_disk_full_error_is_one_line(tmp_path):
    class SafetensorError(Exception):
        pass

    with pytest.raises(OutputError, match="no space left"), staged(tmp_path / "res", "result"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_file_that_appears_during_the_write_is_never_deleted(tmp_path):
    folder = _own(tmp_path / "res", files={"result.json": "old"})
    with pytest.raises(OutputError, match="changed while saehealth was writing"), staged(folder, "result") as staging:
        (staging / "result.json").write_text("new")
        (folder / "mine.txt").write_text("the user's")  # after the check, before the swap
    assert (folder / "mine.txt").read_text() == "the user's"
    assert (folder / "result.json").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_without_an_atomic_exchange_three_renames_do(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_swap, "_renameat2", lambda: None)
    folder = _own(tmp_path / "res", files={"result.json": "old"})
    _own(folder, files={"result.json": "new"})
    assert (folder / "result.json").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_the_current_folder_is_updated_in_place(tmp_path, monkeypatch):
    folder = _own(tmp_path / "res", files={"result.json": "old", "stale.md": "old", "plots/a.png": "old"})
    monkeypatch.chdir(folder)
    inode = folder.stat().st_ino
    _own(folder, files={"result.json": "new", "plots/b.png": "new"})
    assert folder.stat().st_ino == inode  # the user's shell stays in a folder that exists
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        MANIFEST,
        "plots",
        "plots/b.png",
        "result.json",
    ]
    assert (folder / "result.json").read_text() == "new"


def test_a_comparison_update_keeps_its_result_folders(tmp_path):
    cmp = tmp_path / "cmp"
    _own(cmp / "a")
    with staged(cmp, "comparison", in_place=True) as staging:
        _write(staging, {"comparison.json": "1", "frontier_old.png": "1"})
    with staged(cmp, "comparison", in_place=True) as staging:
        _write(staging, {"comparison.json": "2"})
    assert sorted(p.name for p in cmp.iterdir()) == [MANIFEST, "a", "comparison.json"]
    assert (cmp / "a" / "result.json").exists()


def test_the_committed_demo_report_is_saehealths_own():
    """`saehealth demo` writes reports/demo: its committed manifest must list every file there."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "reports" / "demo"
    assert check_output_folder(demo, "result") == demo
    assert {"result.json", "report.md", "plots/"} <= set(_manifest(demo)["entries"])


def test_two_writers_at_once_leave_one_whole_folder(tmp_path):
    import threading

    folder = tmp_path / "res"
    both_staged = threading.Barrier(2)
    errors = []

    def writer(tag: str) -> None:
        try:
            with staged(folder, "result") as staging:
                _write(staging, {"result.json": tag, "report.md": tag})
                both_staged.wait(timeout=30)  # both are written before either is swapped in
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (folder / "result.json").read_text() == (folder / "report.md").read_text()  # one writer's set, whole
    assert _leftovers(tmp_path) == []
