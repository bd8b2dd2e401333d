"""Log one evaluation to Weights & Biases: metrics and uncertainties in the run summary, verdicts as a
table, the report's plots as images, and result.json + report.md + plots as an artifact.

Works offline (`WANDB_MODE=offline`, optionally `WANDB_DIR`): the run is written to disk and its folder
is returned instead of a URL; `wandb sync <folder>` uploads it later.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from saehealth.advice import advise
from saehealth.errors import SaeHealthError
from saehealth.report.plots import PLOTS
from saehealth.report.text import as_numpy
from saehealth.result import RESULT_FILE, EvalResult
from saehealth.thresholds import HEALTHY
from saehealth.verdicts import headline_summary, is_unhealthy, verdicts_of


def log_to_wandb(
    result: EvalResult,
    details: dict | None,
    report_dir: Path | None,
    project: str,
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
) -> str:
    """Create a W&B run for `result`; return its URL, or its local folder when offline.

    `name` defaults to the checkpoint's folder name; `group` gathers the runs of one comparison."""
    import wandb

    verdicts = verdicts_of(result)
    name = name or Path(result.sae.path).name or "sae"
    try:
        run = wandb.init(
            project=project,
            entity=entity,
            name=f"saehealth-{name}",
            group=group,
            job_type="saehealth-eval",
            config={"sae": _jsonable(result.sae.__dict__), "eval": _jsonable(result.eval.__dict__)},
            tags=[tag for tag in ("saehealth", result.sae.architecture) if tag][:2],
            reinit="create_new",
            # Read at call time: wandb caches its environment at the first run of a process, and a
            # notebook or test session may change WANDB_MODE / WANDB_DIR between runs.
            mode=os.environ.get("WANDB_MODE") or None,
            dir=os.environ.get("WANDB_DIR") or None,
        )
    except Exception as exc:  # wandb raises several unrelated types for "not logged in", "no network", ...
        raise SaeHealthError(
            f"Could not start a W&B run ({type(exc).__name__}: {exc}): run `wandb login`, or set WANDB_MODE=offline."
        ) from exc
    try:
        run.summary.update(_summary(result, verdicts))
        run.log(_media(wandb, result, details or {}, verdicts, report_dir))
        run.log_artifact(_artifact(wandb, result, verdicts, report_dir, name))
        if getattr(run, "disabled", False):
            location = "W&B is disabled (WANDB_MODE=disabled): nothing was logged"
        elif getattr(run, "offline", False):
            location = str(Path(run.dir).parent)  # offline-run-… folder, for `wandb sync`
        else:
            location = run.url
    finally:
        run.finish()
    return location


def _summary(result: EvalResult, verdicts: dict) -> dict:
    summary: dict = {}
    for key, value in result.metrics.items():
        if value is not None:
            summary[f"metrics/{key}"] = value
    for key, se in result.uncertainty.items():
        summary[f"uncertainty/{key}"] = se
    for key, verdict in verdicts.items():
        summary[f"verdicts/{key}"] = verdict["status"]
    summary["health/summary"] = headline_summary(verdicts)
    summary["health/headline_healthy"] = sum(v["status"] == HEALTHY for v in verdicts.values() if v["headline"])
    summary["health/unhealthy"] = is_unhealthy(verdicts)
    summary["eval/tokens_scored"] = result.eval.tokens_scored
    return summary


def _media(wandb, result: EvalResult, details: dict, verdicts: dict, report_dir: Path | None) -> dict:
    """The verdict and advice tables, the density histogram, and every PNG of the markdown report."""
    columns = ["metric", "value", "healthy band", "status", "headline", "reason"]
    rows = [[k, v["value"], v["band"], v["status"], v["headline"], v["reason"]] for k, v in verdicts.items()]
    findings = advise(result, details)
    media = {
        "verdicts": wandb.Table(columns=columns, data=rows),
        "advice": wandb.Table(
            columns=["severity", "title", "detail", "recommendation"],
            data=[[f.severity, f.title, f.detail, f.recommendation] for f in findings],
        ),
    }
    density = as_numpy(details.get("feature_density"))
    if density is not None and (density > 0).any():
        media["latents/log10_density"] = wandb.Histogram(np.log10(density[density > 0]))
    if report_dir is not None:
        for key, (file_name, caption) in PLOTS.items():
            path = Path(report_dir) / "plots" / file_name
            if path.is_file():
                media[f"plots/{key}"] = wandb.Image(str(path), caption=caption)
    return media


def _artifact(wandb, result: EvalResult, verdicts: dict, report_dir: Path | None, name: str):
    artifact = wandb.Artifact(
        name=_artifact_name(name), type="saehealth-result", metadata={"summary": headline_summary(verdicts)}
    )
    # The JSON as reported (with these verdicts), even when the file on disk was assessed differently.
    data = {**result.to_dict(), "verdicts": verdicts}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RESULT_FILE
        path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
        artifact.add_file(str(path), name=RESULT_FILE)
        if report_dir is not None:
            report = Path(report_dir) / "report.md"
            if report.is_file():
                artifact.add_file(str(report), name="report.md")
            plots = Path(report_dir) / "plots"
            if plots.is_dir():
                artifact.add_dir(str(plots), name="plots")
        # add_file copies into the artifact's staging area at call time, so the temp folder may go.
        return artifact


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"saehealth-{safe}"[:128]


def _jsonable(obj):
    """JSON-safe copy (non-finite floats become None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
