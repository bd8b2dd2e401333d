"""Writing fails half-way (a full disk, Ctrl-C, SIGTERM): one line, the right exit code, and no result, details
file, report or staging folder left behind. Plus the happy path: a result folder appears whole with its report."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from saehealth.cli import main
from saehealth.output import MANIFEST, STAGING_TAG
from tests.conftest import shifted_identity_sae

FAST = ["--tokens", "256", "--skip", "absorption", "--skip", "geometry", "--quiet"]


def _sae(tmp_path):
    return shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post")


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "cache"}


def test_a_result_folder_appears_whole_with_its_report(tmp_path):
    out = tmp_path / "out"
    main(["eval", "--sae-path", str(_sae(tmp_path)), "--out", str(out), *FAST])  # returns: exit code 0
    entries = json.loads((out / MANIFEST).read_text())["entries"]
    expected = {"result.json", "result.details.safetensors", "result.latents.safetensors", "report.md", "report.html"}
    assert expected | {"plots/"} <= set(entries)
    assert not [p for p in tmp_path.rglob(f"*{STAGING_TAG}*")]
    # The reports name the folder the reader finds, never the staging folder they were written in.
    html = (out / "report.html").read_text()
    assert STAGING_TAG not in html and f"saehealth latents {out} --id" in html
    umask = os.umask(0)
    os.umask(umask)
    for name in ("result.json", "result.details.safetensors", "report.md"):  # readable as the umask says, not 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    # The report command re-renders into the same folder, keeping the result files.
    before = (out / "result.json").read_text()
    main(["report", str(out / "result.json"), "--quiet"])
    assert (out / "result.json").read_text() == before and (out / "report.md").is_file()
    assert (out / "result.latents.safetensors").is_file() and STAGING_TAG not in (out / "report.html").read_text()


def test_a_full_disk_while_writing_the_report_leaves_nothing(tmp_path, monkeypatch, capsys):
    """ENOSPC simulated in the plot writer: result.json and the details file were already staged."""
    from matplotlib.figure import Figure

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    monkeypatch.chdir(tmp_path)
    sae = _sae(tmp_path)
    before = _everything(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--sae-path", str(sae), "--out", str(tmp_path / "reports" / "x"), *FAST])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1
    assert len(err.splitlines()) == 1 and "no space left on device" in err and "Traceback" not in err, err
    assert _everything(tmp_path) == before  # no result, no details file, no reports/ folder, no staging folder


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_writing_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys, signal_name):
    """A real signal to this process while the result folder is being staged (main() turns SIGTERM into the
    same unwinding as Ctrl-C, and puts the previous SIGTERM handler back when it returns)."""
    import saehealth.report.pages

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signal_name))
        raise AssertionError("the signal should have interrupted the write")

    monkeypatch.setattr(saehealth.report.pages, "write_markdown_report", interrupted)
    monkeypatch.chdir(tmp_path)
    sae = _sae(tmp_path)
    before = _everything(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    # A job started in the background by a non-interactive shell inherits SIGINT ignored (and keeps ignoring it,
    # as it should): Ctrl-C's handler is put in place here so that the test means the same wherever it runs.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as info:
            main(["eval", "--sae-path", str(sae), *FAST])
    finally:
        signal.signal(signal.SIGINT, inherited)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 130, err
    assert err.splitlines()[-1].startswith("error: interrupted") and "Traceback" not in err, err
    assert _everything(tmp_path) == before  # no reports/sae folder, no staging folder
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")
def test_ctrl_c_before_any_output_exits_130(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("saehealth.loading.load_checkpoint", interrupt)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--sae-path", str(_sae(tmp_path)), "--out", str(tmp_path / "out")])
    assert info.value.code == 130
    assert capsys.readouterr().err.strip().startswith("error: interrupted")
    assert not (tmp_path / "out").exists()
