"""One result's folder written whole: result.json, its per-latent files and its reports appear together or not
at all (through `output.staged`), and reports re-rendered for a saved result keep its result files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from saehealth.output import absolute, atomic_write, separate_tensors, staged
from saehealth.result import DETAILS_FILE, RESULT_FILE, EvalResult


def save_result_folder(
    folder: str | Path,
    result,
    details: dict | None,
    *,
    latents: Callable[[Path], object] | None = None,
    report: bool = True,
    html_latents: int | None = None,
) -> Path:
    """result.json, its per-latent details, the latents file (`latents(staging)` writes it) and (with `report`)
    report.md with plots/ and report.html into `folder`, all or nothing; returns the folder's absolute path. The
    folder is replaced whole: an earlier result there goes."""
    path = absolute(folder)
    with staged(path, "result") as staging:
        write_result_files(staging, result, details)
        if latents is not None:
            latents(staging)
        if report:
            _write_reports(result, details, staging, html_latents, shown=Path(folder))
    return path


def write_result_files(folder: Path, result: EvalResult, details: dict | None = None) -> Path:
    """Write result.json (and the per-latent companion) into `folder`, each file atomically, nothing else (no
    manifest, no staging: `save_result_folder` is the whole folder under the output rule); returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    if details:
        from safetensors.torch import save_file

        tensors = separate_tensors(details)  # an SAE of one latent: a view shares its memory
        atomic_write(folder / DETAILS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    path = folder / RESULT_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def report_target(folder: str | Path, result_path: str | Path) -> tuple[Path, str, tuple[str, ...]]:
    """(folder, kind, files kept) for a report of the saved result at `result_path` written into `folder`.

    Into the result's own folder it is a result folder whose result files are kept; anywhere else a report
    folder of its own (a folder holding another result is refused: its report would not match)."""
    from saehealth.latents.store import LATENTS_FILE

    path, source = absolute(folder), absolute(result_path)
    source_folder = source if source.is_dir() else source.parent
    if path == source_folder:
        name = RESULT_FILE if source.is_dir() else source.name
        return path, "result", (name, DETAILS_FILE, LATENTS_FILE)
    return path, "report", ()


def save_report_folder(
    folder: str | Path, result, details: dict | None, result_path: str | Path, *, html_latents: int | None = None
) -> Path:
    """report.md with plots/ and report.html for a saved result into `folder` (see `report_target`), all or
    nothing; the latent browser reads the latents file beside the result. Returns the markdown report's path."""
    path, kind, keep = report_target(folder, result_path)
    source = absolute(result_path)
    named = Path(result_path) if source.is_dir() else Path(result_path).parent  # as the user wrote it, for hints
    with staged(path, kind, keep=keep) as staging:
        own = source if source.is_dir() else source.parent  # where its latents file is
        report, _ = _write_reports(result, details, staging, html_latents, source=own, shown=named)
    return path / report.name


def _write_reports(result, details, folder: Path, html_latents: int | None, *, source=None, shown=None):
    from saehealth.report.pages import write_reports

    options = {} if html_latents is None else {"html_latents": html_latents}
    return write_reports(result, details, folder, source=source, shown=shown, **options)
