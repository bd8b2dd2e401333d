"""Where saehealth writes, and the rule that keeps the user's files safe.

Ownership. Every folder saehealth writes (a result, a report, a comparison or run, a trained checkpoint, a SAEBench
export) gets a hidden manifest, `.saehealth.json`, naming its kind and every file and folder saehealth put there.
A folder may receive output only when it does not exist, is empty, or holds nothing but what its own manifest
lists, of the same kind (a comparison folder may also hold result folders); anything else (a user's report.md,
the home folder, `/`, a file, a folder that cannot be written) is refused with one line before any work starts.
saehealth never replaces or deletes a file it did not write.

The manifest is untrusted data (anyone can edit or forge one): `saehealth/manifest.py` parses it into a checked
`Manifest` of plain relative names inside the folder, and a manifest breaking that makes its folder not
saehealth's. A symbolic link, anywhere in a folder, is never saehealth's (saehealth writes none), so nothing is
ever replaced or deleted through one; every deletion works on names checked against the manifest, inside the
folder, without following links (`shutil.rmtree` on Linux works through file descriptors and never leaves the
tree).

Atomicity. Output is written into a staging folder beside its target, on the same filesystem, and swapped in
whole (Linux `renameat2(RENAME_EXCHANGE)`; three renames elsewhere): a result, its details file and its reports
appear together or not at all, and a failure (a full disk, Ctrl-C) removes the staging folder and leaves the
target as it was. A folder that cannot be swapped (a mount point, the current folder or one above it, a folder
whose parent is read-only) is staged inside itself and its entries renamed into place one by one, the result
file and the manifest last; a comparison folder is updated that way too, so the result folders in it stay.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from saehealth.errors import OutputError
from saehealth.folder_swap import (
    STAGING_NAME,
    STAGING_TAG,
    can_swap,
    exchange,
    make_folders,
    new_folder,
    uninterrupted,
    why_not_writable,
    write_failure,
)
from saehealth.manifest import KINDS, MANIFEST, Manifest, manifest_text, plain_relative_path, read_manifest
from saehealth.result import RESULT_FILE

__all__ = ["MANIFEST", "KINDS", "STAGING_TAG", "Manifest", "check_output_folder", "read_manifest", "staged"]


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
            shown = ", ".join(ascii(name)[1:-1] for name in foreign[:3])  # a name may hold anything: show it escaped
            shown += f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise OutputError(
                f"{option} {path} holds files saehealth did not write ({shown}): saehealth only replaces its own "
                "output; give a new or empty folder, or move those files away."
            )
        if not (can_swap(path) or os.access(path, os.W_OK | os.X_OK)):
            raise OutputError(f"{option} {path} is not writable ({why_not_writable(path)}): give another folder.")
        return path
    check_creatable(path, option)
    return path


def check_creatable(path: Path, option: str) -> None:
    """OutputError unless the absent folder `path` can be created: its nearest existing ancestor is a folder
    that really takes a new folder. That is tried (a probe folder made and removed, the ancestor's times put
    back): permissions alone do not tell, e.g. for root under /proc."""
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path} cannot be created: {ancestor} is a file. Give a folder path.")
    reason = None if os.access(ancestor, os.W_OK | os.X_OK) else why_not_writable(ancestor)
    if reason is None:
        try:
            times = os.stat(ancestor)
            new_folder(ancestor, STAGING_TAG).rmdir()
            with contextlib.suppress(OSError):
                os.utime(ancestor, ns=(times.st_atime_ns, times.st_mtime_ns))
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
    if reason is not None:
        raise OutputError(
            f"{option} {path} cannot be created: {ancestor} is not writable ({reason}). Give a folder you can write to."
        )


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


def is_own_folder(folder: Path, kind: str) -> bool:
    """True when `folder` (not a link) is a saehealth folder of `kind` holding only what its manifest lists."""
    try:
        if os.path.islink(folder) or not os.path.isdir(folder):
            return False
        manifest = read_manifest(folder)
        return manifest is not None and manifest.kind == kind and not _foreign_entries(folder, kind, "")
    except (OutputError, OSError):
        return False


def _foreign_entries(folder: Path, kind: str, option: str) -> list[str]:
    manifest = read_manifest(folder, option)
    if manifest is not None and manifest.kind != kind:
        raise OutputError(f"{option} {folder} holds a saehealth {manifest.kind}, not a {kind}: give another folder.")
    empty = Manifest(kind, frozenset(), frozenset())
    return _unlisted(folder, "", manifest or empty, results_allowed=kind == "comparison", option=option)


def _unlisted(root: Path, prefix: str, manifest: Manifest, *, results_allowed: bool, option: str) -> list[str]:
    """Entries under root/prefix that the manifest does not account for ("name" for files, "name/" for folders,
    "name@" for symbolic links, which are never saehealth's; nothing is followed)."""
    found: list[str] = []
    try:
        with os.scandir(root / prefix) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        raise OutputError(f"{option} {root / prefix} cannot be read ({exc.strerror}): give another folder.") from None
    for entry in entries:
        rel = prefix + entry.name
        if entry.is_symlink():
            found.append(rel + "@")
        elif entry.is_dir(follow_symlinks=False):
            if not prefix and STAGING_NAME.match(entry.name):
                continue  # the staging folder of a saehealth run that was killed or is running
            if rel in manifest.folders:
                found += _unlisted(root, rel + "/", manifest, results_allowed=False, option=option)
            elif not (results_allowed and not prefix and is_own_folder(Path(entry.path), "result")):
                found.append(rel + "/")
        elif rel == MANIFEST and entry.is_file(follow_symlinks=False):
            continue
        elif not (entry.is_file(follow_symlinks=False) and rel in manifest.files):
            found.append(rel)  # a file not listed, or a FIFO, socket or device, which saehealth never writes
    return found


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
    in_place = in_place or (os.path.lexists(path) and not can_swap(path))
    created: list[Path] = []
    staging: Path | None = None
    try:
        created = make_folders(path if in_place else path.parent)
        staging = new_folder(
            path if in_place else path.parent, STAGING_TAG if in_place else f".{path.name}{STAGING_TAG}"
        )
        _carry_over(path, staging, keep)
        yield staging
        _write_manifest(staging, kind)
        with uninterrupted():
            if in_place:
                _commit_in_place(staging, path, kind, option)
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


def _carry_over(path: Path, staging: Path, keep: Iterable[str]) -> None:
    """Hard-link (else copy) the kept files, regular files only, into the staging folder."""
    for rel in keep:
        if plain_relative_path(rel) is None:
            raise ValueError(f"not a relative file name: {rel!r}")
        source = path / rel
        if not _is_regular_file(source):
            continue  # absent, a folder or a link: never carried (the check refused links already)
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(source, target, follow_symlinks=False)


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _write_manifest(staging: Path, kind: str) -> None:
    entries = []
    for parent, folders, files in os.walk(staging):  # links to folders are listed with the files, not followed
        rel = Path(parent).relative_to(staging)
        entries += [f"{(rel / name).as_posix()}/" for name in folders if not os.path.islink(Path(parent, name))]
        entries += [(rel / name).as_posix() for name in files if parent != str(staging) or name != MANIFEST]
        entries += [(rel / name).as_posix() for name in folders if os.path.islink(Path(parent, name))]
    (staging / MANIFEST).write_text(manifest_text(kind, entries), encoding="utf-8")


def _commit_swap(staging: Path, path: Path, kind: str) -> None:
    try:
        os.rename(staging, path)  # absent, or an empty folder: replaced at once
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    exchange(staging, path)  # the old content is now at `staging`
    try:
        changed = bool(_foreign_entries(staging, kind, "--out"))
    except OutputError:
        changed = True
    if changed:  # a file appeared after the check, or the manifest changed: put everything back
        exchange(staging, path)
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{path} changed while saehealth was writing it: nothing was replaced; run again.")
    shutil.rmtree(staging)


def _commit_in_place(staging: Path, path: Path, kind: str, option: str) -> None:
    """Rename the staged entries into `path` one by one (the result file last, the manifest after it), then
    remove what the old manifest lists and this run did not write again. Every name touched is a plain name in
    `path`, checked against the old manifest, and nothing is followed: a link found here (it appeared after the
    check) stops the commit."""
    old = read_manifest(path, option) or Manifest(kind, frozenset(), frozenset())
    names = sorted((n for n in os.listdir(staging) if n != MANIFEST), key=lambda n: (n == RESULT_FILE, n))
    for name in names:  # the result file last: its presence means the rest is in place
        source, target = staging / name, path / name
        target_mode = _lstat_mode(target)
        if target_mode is not None and (stat.S_ISLNK(target_mode) or name not in old.top_names()):
            raise OutputError(f"{path} changed while saehealth was writing it ({name} appeared): run again.")
        if target_mode is not None and os.path.samestat(os.lstat(source), os.lstat(target)):
            os.unlink(source)  # a kept file, hard-linked: renaming one link over another of a file does nothing
        elif source.is_dir() and target_mode is not None and stat.S_ISDIR(target_mode):
            exchange(source, target)
            shutil.rmtree(source)
        else:
            if target_mode is not None and stat.S_ISDIR(target_mode):
                shutil.rmtree(target)  # ours (checked): a folder where a file goes now
            os.replace(source, target)
    written = set(names)
    for top in sorted(old.top_names() - written):  # output of an earlier run that this one did not write again
        stale = path / top
        mode = _lstat_mode(stale)
        if mode is None:
            continue
        if stat.S_ISDIR(mode):
            shutil.rmtree(stale)
        else:
            stale.unlink()  # a file, or a link (removed, never followed)
    os.replace(staging / MANIFEST, path / MANIFEST)
    staging.rmdir()


def _lstat_mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


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


def separate_tensors(tensors: dict) -> dict:
    """`tensors` ready for safetensors, which refuses two names for one memory: each contiguous, and one that
    shares its storage with a tensor before it (a view, e.g. one latent's top value and its maximum when d_sae
    is 1) copied out."""
    seen: set[int] = set()
    separate = {}
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        if tensor.untyped_storage().data_ptr() in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        separate[name] = tensor
    return separate
