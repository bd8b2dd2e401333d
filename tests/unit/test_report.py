"""Terminal and markdown reports, plots, and the `report` / `thresholds` commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from report_factory import make_details, make_result, seed_003_result
from rich.console import Console

from saehealth.cli import main
from saehealth.latents.store import write_latents
from saehealth.report import markdown as markdown_module
from saehealth.report import print_report, render_markdown, write_markdown_report
from saehealth.report.plots import FIGURES, PLOTS
from saehealth.report.text import density_bins, format_value
from saehealth.result import RESULT_FILE
from saehealth.result_folder import save_result_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def render(result, details=None, *, quiet=False, width=130) -> str:
    console = Console(record=True, width=width, color_system=None)
    print_report(result, details, console, quiet=quiet)
    return console.export_text()


# ------------------------------------------------------------------------------------------ terminal
def test_terminal_report_of_seed_003():
    result = seed_003_result()
    text = render(result, make_details(result, absorption=False))
    for expected in (
        "checkpoints/test_sae",
        "saelens / standard",
        "saehealth-tiny / blocks.0.hook_resid_post",
        "d_in 4,096 → d_sae 131,072 (×32)",
        "T = 6,400 tokens scored",
        "builtin [validation]",
        "500,000 tokens · lr 0.0001 · l1_coefficient 5 · normalize_activations none",
        "Overall: 0/4 metrics healthy",
        "fires below 3/T = 0.00047 with 95% confidence",
        "Secondary checks",
        "Latent firing density",
        "Too few training tokens per latent",
        "Raise `l1_coefficient` from 5",
    ):
        assert expected in text, expected
    row = next(line for line in text.splitlines() if "Loss recovered" in line)
    assert "0.0723 ± 0.0021" in row and "≥ 0.70" in row and "unhealthy" in row
    lines = text.splitlines()
    dead_at = next(i for i, line in enumerate(lines) if "Dead latents" in line)
    assert "0.888" in lines[dead_at] and "≤ 0.10" in lines[dead_at] and "unhealthy" in lines[dead_at]
    assert "(116,431 of 131,072)" in lines[dead_at + 1] and "borderline 0.10 – 0.20" in lines[dead_at + 1]
    absorption_at = next(i for i, line in enumerate(lines) if "Feature absorption" in line)
    assert "? not measured" in lines[absorption_at] and "only 12 letters" in lines[absorption_at + 1]
    histogram = re.search(r"dead █+ +116,431 \(88\.8%\)", text)
    assert histogram, "dead bin of the density histogram"


def test_headline_table_holds_only_headline_metrics():
    text = render(make_result())
    headline = text[text.index("Health assessment") : text.index("Overall:")]
    assert "Explained variance" not in headline
    assert "Explained variance" in text[text.index("Secondary checks") :]


def test_quiet_is_one_line():
    text = render(seed_003_result(), quiet=True, width=300).strip()
    assert "\n" not in text
    assert text.startswith("✘ 0/4 metrics healthy: loss_recovered 0.072 ✘, l0 227.4 ✘, dead_fraction 0.888 ✘")
    assert "absorption_fraction not measured ?" in text
    assert render(make_result(), quiet=True, width=300).startswith("✔ 4/4 metrics healthy")


def test_report_without_details_has_no_histogram_but_still_advises():
    text = render(make_result())
    assert "Latent firing density" not in text and "Nothing to fix" in text


def test_density_bins_put_dead_latents_first():
    result = make_result({"dead_fraction": 0.25})
    bins = density_bins(make_details(result), result.eval.tokens_scored)
    assert bins[0] == ("dead", 256, "dead")
    assert bins[1][0] == "1e-6 – 1e-5"  # 1/T = 5e-6
    assert bins[-1][2] == "dense"
    assert sum(n for _, n, _ in bins) == 1024


@pytest.mark.parametrize(
    ("key", "value", "se", "text"),
    [
        ("loss_recovered", 0.98123, 0.0021, "0.9812 ± 0.0021"),
        ("l0", 64.04, 0.41, "64.04 ± 0.41"),
        ("l0", 64.04, None, "64.0"),
        ("dead_features", 1200, None, "1,200"),
        ("mse", 0.00012, None, "1.20e-04"),
        ("absorption_fraction", None, None, "not measured"),
    ],
)
def test_value_formatting(key, value, se, text):
    assert format_value(key, value, se) == text


# ------------------------------------------------------------------------------------------ markdown
def test_markdown_report_is_a_self_contained_folder(tmp_path):
    result = make_result({"l0": 150.0}, notes=["evaluated on 'train' | may overlap"])
    path = write_markdown_report(result, make_details(result), tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# SAE health report: test_sae")
    assert "| Metric | Value | Standard | Status |" in text
    assert "| **L0 (per token)** | 150.00 ± 0.41 | 40 – 120 (borderline 20 – 40 or 120 – 200) | ⚠️ borderline |" in text
    assert "### Overall assessment: 3/4 metrics healthy ⚠️" in text
    assert "3/T = 1.5e-05 with 95% confidence" in text
    assert "**Recommendation:**" in text
    assert "evaluated on 'train' \\| may overlap" in text  # table-safe
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(f"plots/{name}" for name, _ in PLOTS.values())
    for link in links:
        assert not Path(link).is_absolute()
        assert (tmp_path / link).read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging folder removed


def test_rewriting_the_report_drops_stale_plots(tmp_path):
    result = make_result()
    write_markdown_report(result, make_details(result), tmp_path)
    assert (tmp_path / "plots" / "absorption_per_letter.png").exists()
    write_markdown_report(result, None, tmp_path)  # no per-latent details: the plots of result.json alone
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["by_position.png", "ce_kl.png"]
    assert "absorption_per_letter.png" not in (tmp_path / "report.md").read_text()


def test_a_failed_write_leaves_the_previous_report(tmp_path, monkeypatch):
    result = make_result()
    write_markdown_report(result, None, tmp_path)
    before = (tmp_path / "report.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(markdown_module, "render_markdown", broken)
    with pytest.raises(RuntimeError):
        write_markdown_report(seed_003_result(), None, tmp_path)
    assert (tmp_path / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.md"]


def test_markdown_lists_not_measured_reasons():
    text = render_markdown(seed_003_result(), None)
    assert "| `absorption_fraction` | not measured | only 12 letters had a probe with F1 > 0.6 (need 20) |" in text
    assert "## Plots" not in text  # no plots given


def test_plots_need_their_data():
    result = make_result({"ce_loss_clean": None})
    result.diagnostics = {}  # a result saved before the diagnostics: no by-position plot
    for name, draw in FIGURES.items():
        assert draw(result, {}) is None, name
    assert FIGURES["loss"](result, {}) is None  # a CE value is missing
    assert FIGURES["loss"](make_result(), {}) is not None


def test_l0_plot_merges_wide_histograms():
    result = make_result({"l0": 900.0}, d_sae=4096)
    figure = FIGURES["l0"](result, make_details(result, absorption=False))
    (axes,) = figure.axes
    assert len(axes.patches) <= 110  # ~100 merged bins plus the shaded bands, not ~1,000 bars


# ------------------------------------------------------------------------------------------ CLI
def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def saved_003(tmp_path) -> Path:
    """The 003 result saved without per-latent details (plots are slow to draw on 2 shared cores)."""
    return save_result_folder(tmp_path / "res", seed_003_result(), None, report=False) / RESULT_FILE


def test_report_command_strict_exits_2_for_an_unhealthy_sae(tmp_path, capsys):
    result = seed_003_result()
    details = make_details(result, absorption=False)
    saved = save_result_folder(tmp_path / "res", result, details, report=False) / RESULT_FILE
    code, out, _ = run_cli(["report", str(saved), "--strict", "--quiet"], capsys)
    assert code == 2
    assert "0/4 metrics healthy" in out and len(out.strip().splitlines()) <= 2  # one line, maybe wrapped
    assert (saved.parent / "report.md").is_file()
    assert (saved.parent / "plots" / "latent_density.png").is_file()  # details were read back from disk


def test_report_command_json_and_thresholds(saved_003, tmp_path, capsys):
    bands = tmp_path / "loose.toml"
    bands.write_text(
        "[loss_recovered]\nhealthy_min = 0.05\nborderline_min = 0.0\n"
        "[l0]\nhealthy_max = 300\nborderline_max = 400\n"
        "[dead_fraction]\nhealthy_max = 0.9\nborderline_max = 0.95\n"
    )
    out_dir = tmp_path / "elsewhere"
    code, out, _ = run_cli(
        ["report", str(saved_003.parent), "--json", "--strict", "--thresholds", str(bands), "--out", str(out_dir)],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert data["summary"] == "3/4 metrics healthy" and data["unhealthy"] is False
    assert data["verdicts"]["loss_recovered"]["band"] == "≥ 0.05"
    assert data["advice"][0]["rule"] == "too_few_training_tokens"
    assert data["report"] == str(out_dir / "report.md") and (out_dir / "report.md").is_file()
    assert not (saved_003.parent / "report.md").exists()


def test_report_command_full_report_and_errors(saved_003, tmp_path, capsys):
    code, out, _ = run_cli(["report", str(saved_003), "--thresholds", "lenient"], capsys)
    assert code == 0 and "Findings and recommendations" in out and "Markdown report:" in out
    code, _, err = run_cli(["report", str(saved_003), "--thresholds", "stirct"], capsys)
    assert code == 1 and "Did you mean 'strict'" in err
    code, _, err = run_cli(["report", str(tmp_path / "nothing")], capsys)
    assert code == 1 and "No result file" in err


def test_reports_name_the_result_folder_as_the_user_wrote_it(tmp_path, monkeypatch, capsys):
    """Relative in, relative out: neither the terminal nor the written pages show the machine's absolute path."""
    from saehealth.metrics.latents import LatentExamples, token_locations

    result = make_result(d_sae=8)
    examples = LatentExamples(8, top=2, sample=1, window=1)
    acts = torch.relu(torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0)))
    examples.update(acts, torch.ones(4, 6, dtype=torch.bool), *token_locations(4, 6, 0, "cpu"))
    save_result_folder(
        tmp_path / "res",
        result,
        None,
        latents=lambda folder: write_latents(folder, examples, None, "not in this test", result.request),
        report=False,
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["report", "res", "--out", "elsewhere"], capsys)
    assert code == 0
    assert "Result: res/result.json\n" in out and "Markdown report: elsewhere/report.md\n" in out
    assert "saehealth latents res\n" in out  # the latents file stays beside the result, not in --out
    html = (tmp_path / "elsewhere" / "report.html").read_text()
    assert '"hint": "saehealth latents res --id"' in html
    written = [p.read_text(errors="replace") for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]
    assert str(tmp_path) not in out and not any(str(tmp_path) in text for text in written)


def test_thresholds_command(tmp_path, capsys):
    code, out, _ = run_cli(["thresholds"], capsys)
    assert code == 0
    assert "Threshold presets" in out and "lenient" in out and "strict" in out
    assert re.search(r"loss_recovered\s+│\s+≥ 0\.70\s+│\s+0\.60 – 0\.70\s+│\s+< 0\.60", out)
    code, out, _ = run_cli(["thresholds", "strict", "--toml"], capsys)
    assert code == 0 and 'extends = "strict"' in out and "[loss_recovered]\nhealthy_min = 0.85" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("l0:\n  healthy_minimum: 3\n")
    code, _, err = run_cli(["thresholds", str(bad)], capsys)
    assert code == 1 and "unknown field 'healthy_minimum'" in err


def test_every_absorption_number_names_its_estimator():
    result = make_result({"absorption_fraction": 0.244, "absorption_fraction_saebench": 0.317})
    result.uncertainty.update(absorption_fraction=0.012, absorption_fraction_saebench=0.021)
    text = render_markdown(result, make_details(result))
    assert (
        "| **Feature absorption** | 0.244 ± 0.012 (converged probes, 5 word splits) | ≤ 0.25 (borderline 0.25 – 0.35)"
        ", set for converged probes | ✅ healthy |" in text
    )
    assert (
        "| **Feature absorption (SAEBench's schedule)** | 0.317 ± 0.021 (saebench-0.6 probes, 5 word splits) | "
        "≤ 0.275 (borderline 0.275 – 0.375), set for saebench-0.6 probes | ⚠️ borderline |" in text
    )
    line = render(result, quiet=True, width=300)
    assert "absorption_fraction 0.244 (converged probes, 5 word splits)" in line  # the one-line verdict
    terminal = render(result, make_details(result))
    assert "set for converged probes" in terminal and "(saebench-0.6 probes, 5 word splits)" in terminal
