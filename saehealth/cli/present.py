"""What eval, compare, demo and report print once their files are written: the health report or the
side-by-side table (or their JSON), W&B logging, and --strict's exit code."""

from __future__ import annotations

from pathlib import Path

import typer

from saehealth.cli.app import console


def console_for(silent: bool):
    """The console progress and notes go to: none when asked to be quiet, or on torchrun ranks other than 0."""
    from saehealth.distributed import ranks

    return None if silent or not ranks().first else console


def present_comparison(comparison, *, quiet: bool, json_output: bool, strict: bool, wandb_project: str | None):
    """Print the side-by-side table (or its JSON), log to W&B, apply --strict."""
    import json

    from saehealth.comparison import comparison_to_dict
    from saehealth.report.compare_terminal import print_comparison
    from saehealth.verdicts import is_unhealthy

    logged = _log_comparison(comparison, wandb_project) if wandb_project else {}
    if json_output:
        summary = comparison_to_dict(comparison)
        if logged:
            summary["wandb"] = logged
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        print_comparison(comparison, console, quiet=quiet)
        for name, location in logged.items():
            console.print(f"W&B {name}: {location}", highlight=False)
    if strict and any(is_unhealthy(entry.result.verdicts) for entry in comparison.entries):
        raise SystemExit(2)  # see _present: typer.Exit codes are swallowed in standalone_mode=False


def _log_comparison(comparison, project: str) -> dict[str, str]:
    """One W&B run per compared SAE, grouped under the comparison folder's name; {name: location}."""
    from saehealth.result import load_details
    from saehealth.wandb_log import log_to_wandb

    group = f"saehealth-compare-{comparison.out.resolve().name}"
    return {
        entry.name: log_to_wandb(
            entry.result,
            load_details(entry.folder, entry.result.sae.d_sae),
            entry.folder,
            project=project,
            name=entry.name,
            group=group,
        )
        for entry in comparison.entries
    }


def present(
    result,
    folder: Path,
    *,
    quiet: bool,
    json_output: bool,
    strict: bool,
    wandb_project: str | None,
    verbose: bool = False,
    source: Path | None = None,
    result_file: Path | None = None,
) -> None:
    """Print the report (or JSON) of a result whose folder is written (its details read from `source` when the
    reports went elsewhere, the result being `result_file`), log to W&B, apply --strict. Paths are printed as
    the user named them."""
    import dataclasses
    import json

    from saehealth.advice import advise
    from saehealth.report import print_report
    from saehealth.report.html import REPORT_HTML
    from saehealth.report.markdown import REPORT_FILE
    from saehealth.result import load_details
    from saehealth.verdicts import headline_summary, is_unhealthy

    details = load_details(source or folder, result.sae.d_sae)
    report_path, html_path = folder / REPORT_FILE, folder / REPORT_HTML
    location = None
    if wandb_project:
        from saehealth.wandb_log import log_to_wandb

        location = log_to_wandb(result, details, folder, project=wandb_project)
    if json_output:
        data = {
            **result.to_dict(),
            "summary": headline_summary(result.verdicts),
            "unhealthy": is_unhealthy(result.verdicts),
            "advice": [dataclasses.asdict(f) for f in advise(result, details)],
            "report": str(report_path),
            "report_html": str(html_path),
            "wandb": location,
        }
        typer.echo(json.dumps(data, indent=2, allow_nan=False))
    else:
        print_report(result, details, console, quiet=quiet)
        if not quiet:
            console.print(
                f"Result: {result_file or folder / 'result.json'}\nMarkdown report: {report_path}\nHTML report "
                f"(latent browser): {html_path}\nLatent cards in the terminal: saehealth latents {source or folder}",
                highlight=False,
            )
            if location:
                console.print(f"W&B: {location}", highlight=False)
            if verbose:
                console.print(f"[dim]timing (s): {result.timing}[/]")
    if strict and is_unhealthy(result.verdicts):
        # SystemExit, not typer.Exit: main() runs typer with standalone_mode=False, which swallows Exit codes.
        raise SystemExit(2)
