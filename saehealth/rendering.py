"""Showing and writing a result from Python: functions of the writing layer, never methods of the result.

`saehealth.evaluate(sae=obj, ...)` writes nothing unless `out=` is given; these render what it returned:
`saehealth.show(result)` prints the terminal report, `saehealth.write_report(result, folder)` writes the result
folder (result.json, details, report.md with plots, report.html) whole. The per-latent details of an in-memory
evaluation stay with its result while the result lives (`in_memory.details_of`), so both render in full.
"""

from __future__ import annotations

from pathlib import Path

from saehealth.result import EvalResult


def show(result: EvalResult, details: dict | None = None, *, console=None, quiet: bool = False) -> None:
    """Print the health report of `result` (as `saehealth eval` does) to `console` (default: stdout)."""
    from rich.console import Console

    from saehealth.in_memory import details_of
    from saehealth.report.terminal import print_report

    print_report(result, details if details is not None else details_of(result), console or Console(), quiet=quiet)


def write_report(result: EvalResult, folder: str | Path, details: dict | None = None) -> Path:
    """Write `result`'s folder (result.json, details, report.md with plots/, report.html) into `folder`, all or
    nothing; a folder saehealth did not write is refused. Returns the folder's absolute path."""
    from saehealth.in_memory import details_of
    from saehealth.result_folder import save_result_folder

    return save_result_folder(folder, result, details if details is not None else details_of(result))
