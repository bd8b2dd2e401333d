"""The manifest, `.saehealth.json`: the list of what saehealth wrote into a folder, read as untrusted data.

Anyone can edit or forge a manifest (a shared result folder, a hand edit), and saehealth replaces and deletes
what it lists, so it is parsed in this one place into a checked `Manifest`: entries are plain relative names
inside the folder (no absolute path, no `..` or `.` part, no empty part, no backslash, NUL or control
character, nothing under a folder the manifest does not list), not too deep, not too many, in a regular file
of bounded size (never a link, FIFO or device). A manifest breaking any of these makes its folder not
saehealth's. The rule that uses it is `saehealth/output.py`.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from saehealth.errors import OutputError

MANIFEST = ".saehealth.json"
MANIFEST_FORMAT = 1
KINDS = ("result", "report", "comparison", "checkpoint", "saebench")  # the kinds of folder saehealth writes
# Bounds on a manifest, far above anything saehealth writes (a checkpoint lists a few files, a result a dozen).
MAX_MANIFEST_BYTES = 16 << 20
MAX_ENTRIES = 100_000
MAX_DEPTH = 8
MAX_NAME_BYTES = 255


# ---------------------------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Manifest:
    """A folder's manifest, checked: its kind, and the relative paths of the files and folders saehealth wrote
    there (folders without their trailing '/'). Every path is a plain name or names joined by '/', inside the
    folder."""

    kind: str
    files: frozenset[str]
    folders: frozenset[str]

    @property
    def entries(self) -> list[str]:
        """The entries as the manifest file writes them: files as they are, folders with a trailing '/'."""
        return sorted([*self.files, *(f"{folder}/" for folder in self.folders)])

    def top_names(self) -> set[str]:
        """The names directly in the folder that the manifest accounts for."""
        return {path.split("/", 1)[0] for path in (*self.files, *self.folders)}


def read_manifest(folder: Path, option: str = "--out") -> Manifest | None:
    """The checked manifest of `folder`, None when it has none; OutputError when it is not one saehealth wrote
    (unreadable, malformed, or naming anything but plain relative names inside the folder)."""
    file = Path(folder) / MANIFEST
    if not os.path.lexists(file):
        return None
    manifest = _parse_manifest(_read_small_file(file))
    if manifest is None:
        raise OutputError(
            f"{file} is not a saehealth manifest, so saehealth cannot tell which files in {file.parent} are its "
            f"own: give another folder with {option}."
        )
    return manifest


def _read_small_file(file: Path) -> bytes | None:
    """The bytes of `file` when it is a regular file (not a link, a FIFO or a device) of a manifest's size."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(file, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_manifest(raw: bytes | None) -> Manifest | None:
    if raw is None or len(raw) > MAX_MANIFEST_BYTES:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and data.get("saehealth_manifest") == MANIFEST_FORMAT):
        return None
    kind, entries = data.get("kind"), data.get("entries")
    if kind not in KINDS or not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        return None
    files: set[str] = set()
    folders: set[str] = set()
    for entry in entries:
        path = plain_relative_path(entry)
        if path is None:
            return None
        (folders if entry.endswith("/") else files).add(path)
    if files & folders or MANIFEST in files | folders:
        return None  # one name both a file and a folder; the manifest listing itself
    for path in files | folders:
        parent = path.rpartition("/")[0]
        if parent and parent not in folders:
            return None  # an entry under a folder the manifest does not list
    return Manifest(kind, frozenset(files), frozenset(folders))


def plain_relative_path(entry: object) -> str | None:
    """`entry` without its folder's trailing '/', when it is names joined by '/' inside the folder; else None."""
    if not isinstance(entry, str):
        return None
    path = entry[:-1] if entry.endswith("/") else entry
    parts = path.split("/")
    if not path or len(parts) > MAX_DEPTH:
        return None
    for part in parts:
        if part in ("", ".", "..") or "\\" in part:
            return None
        if any(unicodedata.category(char) in ("Cc", "Cs") for char in part):
            return None  # NUL and control characters; lone surrogates, which no filesystem name holds
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return None
    return path


def manifest_text(kind: str, entries: Iterable[str]) -> str:
    """The manifest file of a folder of `kind` listing `entries` ('name', 'folder/', 'folder/name')."""
    data = {
        "saehealth_manifest": MANIFEST_FORMAT,
        "kind": kind,
        "entries": sorted(set(entries)),
        "about": "saehealth replaces only the entries listed here; a folder holding anything else is refused.",
    }
    return json.dumps(data, indent=1) + "\n"
