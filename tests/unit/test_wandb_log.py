"""W&B logging (saehealth/wandb_log.py), offline into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_factory import make_details, make_result

from saehealth import wandb_log
from saehealth.errors import SaeHealthError
from saehealth.report import write_markdown_report


def test_offline_run_holds_plots_tables_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = make_result({"dead_fraction": 0.5})
    details = make_details(result)
    report_dir = tmp_path / "report"
    write_markdown_report(result, details, report_dir)

    location = Path(wandb_log.log_to_wandb(result, details, report_dir, project="saehealth-test"))

    assert location.is_dir() and location.name.startswith("offline-run-")
    assert location.is_relative_to(tmp_path / "wb")
    assert list(location.glob("run-*.wandb"))
    images = {p.name.split("_0_")[0] for p in (location / "files" / "media" / "images" / "plots").iterdir()}
    assert images == {"density", "l0", "loss", "absorption", "decoder_cosine", "by_position"}
    (verdict_table,) = (location / "files" / "media" / "table").glob("verdicts_*.table.json")
    table = json.loads(verdict_table.read_text())
    rows = {row[0]: row for row in table["data"]}
    assert rows["dead_fraction"][3] == "unhealthy" and rows["loss_recovered"][3] == "healthy"


def test_summary_holds_metrics_uncertainty_and_verdicts():
    result = make_result({"l0": 300.0, "absorption_fraction": None})
    summary = wandb_log._summary(result, result.verdicts)
    assert summary["metrics/l0"] == 300.0 and "metrics/absorption_fraction" not in summary
    assert summary["uncertainty/loss_recovered"] == pytest.approx(0.0021)
    assert summary["verdicts/l0"] == "unhealthy" and summary["verdicts/absorption_fraction"] == "not measured"
    assert summary["health/summary"] == "2/4 metrics healthy" and summary["health/unhealthy"] is True


def test_artifact_holds_the_json_report_and_plots(tmp_path):
    import wandb

    result = make_result()
    write_markdown_report(result, None, tmp_path)
    artifact = wandb_log._artifact(wandb, result, result.verdicts, tmp_path, "my sae/v1")
    assert artifact.name == "saehealth-my-sae-v1"
    assert set(artifact.manifest.entries) == {"result.json", "report.md", "plots/ce_kl.png", "plots/by_position.png"}


def test_disabled_mode_logs_nothing(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert "disabled" in wandb_log.log_to_wandb(make_result(), None, None, project="p")


def test_a_run_that_cannot_start_is_a_user_error(monkeypatch):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(SaeHealthError, match="run `wandb login`, or set WANDB_MODE=offline"):
        wandb_log.log_to_wandb(make_result(), None, None, project="p")
