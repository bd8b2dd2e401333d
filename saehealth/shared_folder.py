"""Files saehealth adds to a folder it shares with other programs' files: `--saebench-out`, SAEBench's
`eval_results/` layout, where SAEBench's own result files may sit beside saehealth's.

The folder is not replaced whole as a result folder is; saehealth adds its files and lists each in the folder's
manifest (`saehealth/manifest.py`, kind `saebench`). It replaces only files that manifest lists: a same-named
file it did not write (a colleague's SAEBench result) is refused before any work starts, as are `/`, a file,
a folder that cannot be written, a subfolder or a file that is a symbolic link. Each file is written to a
temporary file beside it and renamed into place; the manifest is updated last.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from saehealth.errors import OutputError
from saehealth.folder_swap import why_not_writable, write_failure
from saehealth.manifest import MANIFEST, Manifest, manifest_text, plain_relative_path, read_manifest
from saehealth.output import absolute, check_creatable


def check_shared_folder(folder: str | Path, kind: str, names: list[str], *, option: str) -> Path:
    """The absolute path of `folder` when saehealth may add the files `names` (relative paths, e.g.
    'core/x.json') there; OutputError naming the problem otherwise. Writes nothing."""
    path = absolute(folder)
    if path.parent == path:
        raise OutputError(f"{option} {path} is the filesystem root: give a folder of its own, e.g. eval_results.")
    if not os.path.lexists(path):
        check_creatable(path, option)
        return path
    if not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder: give a new folder or an earlier {option}.")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path} is not writable ({why_not_writable(path)}): give another folder.")
    manifest = _manifest(path, kind, option)
    for name in names:
        if plain_relative_path(name) is None or name == MANIFEST:
            raise OutputError(f"{option}: {ascii(name)} cannot be a file name there: rename the output folder.")
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            try:
                mode = os.lstat(path / rel).st_mode
            except FileNotFoundError:
                break
            is_file = depth == len(parts)
            ours = rel in manifest.files if is_file else stat.S_ISDIR(mode)
            if not ours or (is_file and not stat.S_ISREG(mode)):
                raise OutputError(
                    f"{option} {path} already holds {rel}, which saehealth did not write: saehealth only replaces "
                    "its own files; move it away or give another folder."
                )
    return path


def add_files(folder: str | Path, kind: str, files: dict[str, str], *, option: str) -> list[Path]:
    """Write `files` (relative path -> text) into `folder` under the rule of `check_shared_folder` (checked
    again here) and list them in its manifest; returns the paths written. A refused write (full disk,
    permission) is a one-line OutputError."""
    path = check_shared_folder(folder, kind, list(files), option=option)
    written: list[Path] = []
    temporary: list[tuple[Path, Path]] = []
    try:
        path.mkdir(parents=True, exist_ok=True)  # checked: absent and creatable, or a folder
        for name, text in files.items():
            target = path / name
            _make_real_folders(path, name.split("/")[:-1])
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            temporary.append((tmp, target))
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
        manifest = _manifest(path, kind, option)  # read again: another run may have added files meanwhile
        folders = {"/".join(n.split("/")[:i]) for n in files for i in range(1, len(n.split("/")))}
        entries = {*manifest.entries, *files, *(f"{f}/" for f in folders)}
        tmp_manifest = path / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
        tmp_manifest.write_text(manifest_text(kind, entries), encoding="utf-8")
        temporary.append((tmp_manifest, path / MANIFEST))
        for tmp, target in temporary:  # the files, then the manifest that lists them
            os.replace(tmp, target)
            written.append(target)
    except BaseException as exc:
        for tmp, _ in temporary:
            Path(tmp).unlink(missing_ok=True)
        reason = write_failure(exc)
        if reason is not None:
            raise OutputError(f"Could not write into {path} ({reason}): give another folder with {option}.") from exc
        raise
    return written[:-1]


def _manifest(path: Path, kind: str, option: str) -> Manifest:
    manifest = read_manifest(path, option)
    if manifest is not None and manifest.kind != kind:
        raise OutputError(f"{option} {path} holds a saehealth {manifest.kind}, not a {kind}: give another folder.")
    return manifest or Manifest(kind, frozenset(), frozenset())


def _make_real_folders(root: Path, parts: list[str]) -> None:
    """Create root/parts[0]/parts[1]/... as real folders; a link among them is refused, never followed."""
    folder = root
    for part in parts:
        folder = folder / part
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise OutputError(f"{folder} is not a folder saehealth can write into (a link or a file).")
