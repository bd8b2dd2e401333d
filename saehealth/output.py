"""Where saehealth writes, and the rule that keeps the user's files safe.

Ownership. Every folder saehealth writes (a result, a report, a comparison, a trained checkpoint) gets a hidden
manifest, `.saehealth.json`, naming its kind and every file and folder saehealth put there. A folder may receive
output only when it does not exist, is empty, or holds nothing but what its own manifest lists, of the same kind
(a comparison folder may also hold result folders); anything else (a user's report.md, the home folder, `/`, a
file, a folder that cannot be written) is refused with one line before any work starts. saehealth never
replaces or deletes a file it did not write.

Atomicity. Output is written into a staging folder beside its target, on the same filesystem, and swapped in
whole (Linux `renameat2(RENAME_EXCHANGE)`; three renames elsewhere): a result, its details file and its reports
appear together or not at all, and a failure (a full disk, Ctrl-C) removes the staging folder and leaves the
target as it was. A folder that cannot be swapped (a mount point, the current folder or one above it, a folder
whose parent is read-only) is staged inside itself and its entries renamed into place one by one, the result
file and the manifest last; a comparison folder is updated that way too, so the result folders in it stay.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from saehealth.errors import OutputError
from saehealth.result import RESULT_FILE

MANIFEST = ".saehealth.json"
MANIFEST_FORMAT = 1
KINDS = ("result", "report", "comparison", "checkpoint")
STAGING_TAG = ".saehealth-staging-"  # in the name of every staging folder, beside or inside its target
# errno values meaning "this place cannot take the output": one line instead of a traceback.
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
    errno.ENAMETOOLONG,
}


# ---------------------------------------------------------------------------------------------- the check
def check_output_folder(folder: str | Path, kind: str, *, option: str = "--out") -> Path:
    """The absolute path of `folder` when saehealth may write `kind` output there; OutputError otherwise.

    Run it before any work starts: the folder must be absent (and creatable), empty, or saehealth's own
    folder of this kind holding nothing else, and writable. `option` names the setting in messages.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    path = absolute(folder)
    if path.parent == path:
        raise OutputError(f"{option} {path} is the filesystem root: give a folder of its own, e.g. reports/NAME.")
    if os.path.lexists(path):
        if not path.is_dir():
            raise OutputError(f"{option} {path} is a file, not a folder: give a new or empty folder.")
        if not os.access(path, os.R_OK | os.X_OK):
            raise OutputError(f"{option} {path} cannot be read (permission denied): give a folder you can write to.")
        foreign = _foreign_entries(path, kind, option)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(
                f"{option} {path} holds files saehealth did not write ({shown}): saehealth only replaces its own "
                "output; give a new or empty folder, or move those files away."
            )
        if not (_can_swap(path) or os.access(path, os.W_OK | os.X_OK)):
            raise OutputError(f"{option} {path} is not writable ({_why_not_writable(path)}): give another folder.")
        return path
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path} cannot be created: {ancestor} is a file. Give a folder path.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(
            f"{option} {path} cannot be created: {ancestor} is not writable ({_why_not_writable(ancestor)}). "
            "Give a folder you can write to."
        )
    return path


def absolute(folder: str | Path) -> Path:
    """`folder` with `~` expanded and symbolic links resolved (the folder that is really written)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(folder))))


def display_path(path: str | Path) -> str:
    """`path` as a reader in the current directory would write it: relative when it lies under that directory,
    else as it is (messages and reports never show the machine's absolute path where a relative one serves)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_manifest(folder: Path, option: str = "--out") -> dict | None:
    """The manifest of `folder` ({"kind", "entries", ...}), None when it has none; OutputError when it is broken."""
    file = Path(folder) / MANIFEST
    if not os.path.lexists(file):
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not (
        isinstance(data, dict)
        and data.get("kind") in KINDS
        and isinstance(entries, list)
        and all(isinstance(e, str) for e in entries)
    ):
        raise OutputError(
            f"{file} is not a saehealth manifest, so saehealth cannot tell which files in {file.parent} are its "
            f"own: give another folder with {option}."
        )
    return data


def is_own_folder(folder: Path, kind: str) -> bool:
    """True when `folder` is a saehealth folder of `kind` holding only what its manifest lists."""
    try:
        manifest = read_manifest(folder)
        return manifest is not None and manifest["kind"] == kind and not _foreign_entries(folder, kind, "")
    except (OutputError, OSError):
        return False


def _foreign_entries(folder: Path, kind: str, option: str) -> list[str]:
    manifest = read_manifest(folder, option)
    if manifest is not None and manifest["kind"] != kind:
        raise OutputError(f"{option} {folder} holds a saehealth {manifest['kind']}, not a {kind}: give another folder.")
    listed = set(manifest["entries"]) if manifest else set()
    return _unlisted(folder, "", listed, results_allowed=kind == "comparison", option=option)


def _unlisted(root: Path, prefix: str, listed: set[str], *, results_allowed: bool, option: str) -> list[str]:
    """Entries under root/prefix that no manifest accounts for ("name" for files, "name/" for folders)."""
    found: list[str] = []
    try:
        with os.scandir(root / prefix) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        raise OutputError(f"{option} {root / prefix} cannot be read ({exc.strerror}): give another folder.") from None
    for entry in entries:
        rel = prefix + entry.name
        if rel == MANIFEST or (not prefix and STAGING_TAG in entry.name):
            continue  # the manifest, and staging folders of saehealth runs that were killed or are running
        if entry.is_dir(follow_symlinks=False):
            if rel + "/" in listed:
                found += _unlisted(root, rel + "/", listed, results_allowed=False, option=option)
            elif not (results_allowed and not prefix and is_own_folder(Path(entry.path), "result")):
                found.append(rel + "/")
        elif rel not in listed:
            found.append(rel)
    return found


def _can_swap(path: Path) -> bool:
    """Whether an existing folder can be replaced whole by renames in its parent."""
    if os.path.ismount(path):
        return False
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was deleted under us
        cwd = None
    if cwd is not None and (path == cwd or path in cwd.parents):
        return False  # renaming it away would leave the user's shell in a deleted folder
    parent = path.parent
    return os.stat(path).st_dev == os.stat(parent).st_dev and os.access(parent, os.W_OK | os.X_OK)


def _why_not_writable(path: Path) -> str:
    try:
        if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError:
        pass
    return "permission denied"


# ---------------------------------------------------------------------------------------------- writing
@contextmanager
def staged(
    folder: str | Path, kind: str, *, keep: Iterable[str] = (), in_place: bool = False, option: str = "--out"
) -> Iterator[Path]:
    """Write `folder`'s new content into the yielded staging folder; on success it replaces the folder.

    The folder is checked first (`check_output_folder`). `keep` names files of the existing folder carried
    over unchanged (hard links). `in_place` updates the folder instead of replacing it: entries not written
    now stay, except files the old manifest lists (stale output). On any failure, including Ctrl-C, the staging
    folder is removed and the folder is left as it was; a full disk or a write refused by the system becomes
    a one-line OutputError.
    """
    path = check_output_folder(folder, kind, option=option)
    in_place = in_place or (os.path.lexists(path) and not _can_swap(path))
    created: list[Path] = []
    staging: Path | None = None
    try:
        created = _make_folders(path if in_place else path.parent)
        staging = _new_folder(
            path if in_place else path.parent, STAGING_TAG if in_place else f".{path.name}{STAGING_TAG}"
        )
        _carry_over(path, staging, keep)
        yield staging
        _write_manifest(staging, kind)
        with _uninterrupted():
            if in_place:
                _commit_in_place(staging, path)
            else:
                _commit_swap(staging, path, kind)
        staging = None
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                break
        reason = write_failure(exc)
        if reason is not None:
            fix = "free some space or give" if "space" in reason or "quota" in reason else "give"
            raise OutputError(
                f"Could not write {path} ({reason}): nothing was written; {fix} another folder with {option}."
            ) from exc
        raise


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while staged output is renamed into place, so it is never left half-renamed."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_failure(exc: BaseException) -> str | None:
    """The reason when `exc` means the filesystem refused a write (full disk, read-only, permission), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and type(exc).__name__ == "SafetensorError":  # safetensors reports I/O errors as text
        match = re.search(r"os error (\d+)", str(exc))
        code = int(match.group(1)) if match else None
    return os.strerror(code).lower() if code in _WRITE_ERRNOS else None


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; the folders created, outermost first (removed again on failure)."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    created = []
    for made in reversed(missing):
        made.mkdir()
        created.append(made)
    return created


def _new_folder(parent: Path, prefix: str) -> Path:
    # os.mkdir applies the umask (tempfile.mkdtemp would make it 0700, and the result folder with it).
    folder = parent / f"{prefix}{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def _carry_over(path: Path, staging: Path, keep: Iterable[str]) -> None:
    for rel in keep:
        source = path / rel
        if not source.is_file():
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(source, target)


def _write_manifest(staging: Path, kind: str) -> None:
    entries = sorted(
        str(p.relative_to(staging)) + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in staging.rglob("*")
        if p.name != MANIFEST or p.parent != staging
    )
    data = {
        "saehealth_manifest": MANIFEST_FORMAT,
        "kind": kind,
        "entries": entries,
        "about": "saehealth replaces only the entries listed here; a folder holding anything else is refused.",
    }
    (staging / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _commit_swap(staging: Path, path: Path, kind: str) -> None:
    try:
        os.rename(staging, path)  # absent, or an empty folder: replaced at once
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    exchange(staging, path)  # the old content is now at `staging`
    if _foreign_entries(staging, kind, "--out"):  # a file appeared after the check: put everything back
        exchange(staging, path)
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{path} changed while saehealth was writing it: nothing was replaced; run again.")
    shutil.rmtree(staging)


def _commit_in_place(staging: Path, path: Path) -> None:
    old = read_manifest(path) or {"entries": []}
    names = sorted((n for n in os.listdir(staging) if n != MANIFEST), key=lambda n: (n == RESULT_FILE, n))
    for name in names:  # the result file last: its presence means the rest is in place
        source, target = staging / name, path / name
        if source.is_dir() and target.is_dir() and not target.is_symlink():
            exchange(source, target)
            shutil.rmtree(source)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # ours (checked): a folder where a file goes now
            os.replace(source, target)
    written = set(names)
    for entry in old["entries"]:  # output of an earlier run that this one did not write again
        top = entry.split("/")[0]
        if top in written or top == MANIFEST:
            continue
        written.add(top)
        stale = path / top
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        elif os.path.lexists(stale):
            stale.unlink()
    os.replace(staging / MANIFEST, path / MANIFEST)
    staging.rmdir()


def exchange(a: Path, b: Path) -> None:
    """Swap two paths: atomically with Linux renameat2(RENAME_EXCHANGE), else with three renames."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # else: this filesystem cannot exchange
            raise OSError(code, os.strerror(code), str(b))
    aside = b.with_name(f".{b.name}{STAGING_TAG}old-{secrets.token_hex(4)}")
    os.rename(b, aside)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def atomic_write(path: Path, write) -> None:
    """Write one file through `write(tmp_path)` to a temporary file beside `path`, then rename over it."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, unlike mkstemp's 0600
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # safetensors re-creates the file as 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
