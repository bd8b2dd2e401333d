"""One exception hierarchy for everything a user can get wrong.

The CLI turns any `SaeHealthError` into a one-line message and exit code 1 (a traceback only with
`--debug`); library callers catch the class they care about.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SaeHealthError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


class ConfigError(SaeHealthError):
    """A configuration file, option or override is missing, malformed or unknown."""


class CheckpointError(SaeHealthError):
    """An SAE checkpoint is missing, unreadable, corrupt or in no format saehealth knows."""


class IncompatibleSAEError(SaeHealthError):
    """The SAE does not fit the model: wrong width, missing hook, unsupported hook."""


class ModelError(SaeHealthError):
    """The language model cannot be found or loaded."""


class DataError(SaeHealthError):
    """The evaluation or training data cannot be found, read or is too small."""


class OutputError(SaeHealthError):
    """An output folder cannot be used (it holds files saehealth did not write, is a file, is not writable) or
    cannot be written (the disk is full)."""


def suggest(name: str, valid: Iterable[str], n: int = 3) -> str:
    """' Did you mean X?' for the nearest valid names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
