"""The filesystem moves under saehealth's output rule (`saehealth/output.py`): swapping two paths atomically,
creating folders so that a failure can remove them again, keeping Ctrl-C out of a commit, and telling a refused
write (full disk, read-only, permission) from a bug. Nothing here decides what may be written where."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_TAG = ".saehealth-staging-"  # in the name of every staging folder, beside or inside its target
# A staging folder's name as saehealth makes it (8 random hex digits): the only hidden entries the rule passes over.
STAGING_NAME = re.compile(r"^(\..+)?" + re.escape(STAGING_TAG) + r"(old-)?[0-9a-f]{8}$")
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


def write_failure(exc: BaseException) -> str | None:
    """The reason when `exc` means the filesystem refused a write (full disk, read-only, permission), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and type(exc).__name__ == "SafetensorError":  # safetensors reports I/O errors as text
        match = re.search(r"os error (\d+)", str(exc))
        code = int(match.group(1)) if match else None
    return os.strerror(code).lower() if code in _WRITE_ERRNOS else None


@contextmanager
def uninterrupted() -> Iterator[None]:
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


def make_folders(folder: Path) -> list[Path]:
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


def new_folder(parent: Path, prefix: str) -> Path:
    """A new folder `parent/<prefix><8 hex digits>`."""
    # os.mkdir applies the umask (tempfile.mkdtemp would make it 0700, and the result folder with it).
    folder = parent / f"{prefix}{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def can_swap(path: Path) -> bool:
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


def why_not_writable(path: Path) -> str:
    """Why `path` cannot be written: a read-only filesystem, else permission denied."""
    try:
        if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError:
        pass
    return "permission denied"


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
