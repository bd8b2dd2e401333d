"""Files the process cannot read and folders it cannot write, as a user without root's override: one line,
exit code 1, nothing written.

Root reads and writes anything, so as root the commands run in a forked child that has dropped to the
`nobody` user (a fork, not a new interpreter: the interpreter may live where `nobody` cannot read it);
as any other user the child just runs them. Skipped where there is no fork or, as root, no `nobody`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from saehealth.cli import main
from saehealth.output import MANIFEST
from tests.conftest import shifted_identity_sae

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to run as another user")


def _unprivileged_user():
    """(uid, gid) to drop to when root, None when already unprivileged; skips when root has no `nobody`."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        pytest.skip("running as root and there is no `nobody` user to drop to")
    return nobody.pw_uid, nobody.pw_gid


def _cli(args: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `saehealth ARGS`."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            return 0, err.getvalue()
        except SystemExit as exc:
            return exc.code, err.getvalue()


def _run_unprivileged(calls, cwd: Path) -> list[tuple[int, str]]:
    """The (exit code, stderr) each call returns, run in a forked child without privileges."""
    user = _unprivileged_user()
    import saehealth.data  # noqa: F401  (imported before the fork: `nobody` may not read the interpreter's files)
    import saehealth.evaluation  # noqa: F401
    import saehealth.loading  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            os.chdir(cwd)
            results = []
            for call in calls:
                try:
                    results.append(call())
                except BaseException as exc:  # noqa: BLE001  (reported to the parent as a failure)
                    results.append((-1, repr(exc)))
            with os.fdopen(write_end, "w") as pipe:
                json.dump(results, pipe)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text)


@pytest.fixture
def work():
    """A world-readable folder (pytest's tmp_path is private to root, so `nobody` could not even enter it)."""
    folder = Path(tempfile.mkdtemp(prefix="saehealth-perm-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def _readable_sae(folder: Path) -> Path:
    sae = shifted_identity_sae(folder, 128, hook_name="blocks.0.hook_resid_post")
    for path in sae.iterdir():
        path.chmod(0o644)  # SAELens writes its weights 0600
    return sae


def _snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size) for p in root.rglob("*")}


def test_unreadable_inputs_and_unwritable_outputs(work):
    sae = _readable_sae(work / "sae")
    outs = work / "outs"  # where the unprivileged user may write, so that only the input is the problem
    outs.mkdir()
    outs.chmod(0o777)
    cases = []

    unreadable_cfg = _readable_sae(work / "sae_cfg")
    (unreadable_cfg / "cfg.json").chmod(0)
    cases.append((["eval", "--sae-path", str(unreadable_cfg), "--out", str(outs / "o1")], "cannot be read"))

    unreadable_weights = _readable_sae(work / "sae_weights")
    (unreadable_weights / "sae_weights.safetensors").chmod(0)
    cases.append((["eval", "--sae-path", str(unreadable_weights), "--out", str(outs / "o2")], "cannot be read"))

    unreadable_folder = _readable_sae(work / "sae_folder")
    unreadable_folder.chmod(0)
    cases.append((["inspect", str(unreadable_folder)], "cannot be read"))

    locked = work / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    cases.append((["eval", "--sae-path", str(sae), "--out", str(locked / "res")], "not writable"))

    own_but_locked = work / "locked" / "mine"  # created before the lock: an own folder nobody may write
    locked.chmod(0o755)
    own_but_locked.mkdir()
    (own_but_locked / MANIFEST).write_text(json.dumps({"saehealth_manifest": 1, "kind": "result", "entries": []}))
    own_but_locked.chmod(0o555)
    locked.chmod(0o555)
    cases.append((["eval", "--sae-path", str(sae), "--out", str(own_but_locked)], "not writable"))

    sb = ["--tokens", "256", "--skip", "absorption"]  # SAEBench's files need the geometry
    cases.append(
        (
            ["eval", "--sae-path", str(sae), "--out", str(outs / "o3"), "--saebench-out", str(locked), *sb],
            "not writable",
        )
    )
    cases.append(
        (
            ["eval", "--sae-path", str(sae), "--out", str(outs / "o4"), "--saebench-out", str(locked / "sb"), *sb],
            "cannot be created",
        )
    )

    result = work / "res" / "result.json"
    result.parent.mkdir()
    result.write_text("{}")
    result.chmod(0)
    # typer >= 0.29 checks a Path argument's readability itself ("is not readable"); saehealth does otherwise
    cases.append((["report", str(result), "--out", str(outs / "rep")], "read"))

    before = _snapshot(work)
    outcomes = _run_unprivileged([lambda args=args: _cli(args) for args, _ in cases], work)
    for (args, expected), (code, err) in zip(cases, outcomes, strict=True):
        err = err.strip()
        assert code == 1, (args, err)
        assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, (args, err)
        assert expected in err, (args, err)
    assert _snapshot(work) == before


def test_an_unreadable_dataset_file_is_one_line(work):
    """Through the library: the command line loads the model before the data, which a forked child should not."""
    from saehealth.data import load_dataset
    from saehealth.errors import DataError

    dataset = work / "data.jsonl"
    dataset.write_text('{"text": "hello"}\n')
    dataset.chmod(0)

    def load() -> tuple[int, str]:
        try:
            load_dataset(str(dataset))
        except DataError as exc:
            return 1, f"error: {exc}"
        return 0, ""

    [(code, err)] = _run_unprivileged([load], work)
    assert code == 1 and "cannot be read" in err and len(err.splitlines()) == 1, err
