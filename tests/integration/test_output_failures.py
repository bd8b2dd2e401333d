"""Writing fails half-way (a full disk, Ctrl-C, SIGTERM): one line, the right exit code, and no result, details
file, report or staging folder left behind. Plus the happy path: a result folder appears whole with its report."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saehealth.cli import main
from saehealth.output import MANIFEST, STAGING_TAG
from tests.conftest import shifted_identity_sae

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--tokens", "256", "--skip", "absorption", "--skip", "geometry", "--quiet"]


def _sae(tmp_path):
    return shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post")


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "cache"}


def test_a_result_folder_appears_whole_with_its_report(tmp_path):
    out = tmp_path / "out"
    main(["eval", "--sae-path", str(_sae(tmp_path)), "--out", str(out), *FAST])  # returns: exit code 0
    entries = json.loads((out / MANIFEST).read_text())["entries"]
    assert {"result.json", "result.details.safetensors", "report.md", "plots/"} <= set(entries)
    assert not [p for p in tmp_path.rglob(f"*{STAGING_TAG}*")]
    # The report command re-renders into the same folder, keeping the result files.
    before = (out / "result.json").read_text()
    main(["report", str(out / "result.json"), "--quiet"])
    assert (out / "result.json").read_text() == before and (out / "report.md").is_file()


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


_INTERRUPT_DURING_WRITE = """
import os, signal, sys, time
import saehealth.report

def interrupted(*args, **kwargs):  # the signal arrives while the result folder is being staged
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(30)

saehealth.report.write_markdown_report = interrupted
from saehealth.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_writing_exits_130_and_leaves_nothing(tmp_path, signal_name):
    sae = _sae(tmp_path)
    before = _everything(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAEHEALTH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_DURING_WRITE, signal_name, "eval", "--sae-path", str(sae), *FAST],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = done.stderr.strip()
    assert done.returncode == 130, err
    assert err.splitlines()[-1].startswith("error: interrupted") and "Traceback" not in err, err
    assert _everything(tmp_path) == before  # no reports/sae folder, no staging folder


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
