"""The rich terminal report: header, the headline table of 003, secondary checks, a latent-density
histogram drawn with block characters, and the advice."""

from __future__ import annotations

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from saehealth.advice import Finding, advise
from saehealth.report.routing import routing_table
from saehealth.report.text import (
    OTHER_KEYS,
    SEVERITY_MARK,
    SEVERITY_STYLE,
    STATUS_MARK,
    STATUS_STYLE,
    dead_bound_sentence,
    density_bins,
    format_value,
    header_facts,
    label,
    value_with_context,
)
from saehealth.result import EvalResult
from saehealth.thresholds import BAND_ESTIMATORS, HEALTHY, NOT_MEASURED, Thresholds
from saehealth.verdicts import headline_summary, is_unhealthy, verdicts_of

BAR_WIDTH = 40


def print_report(result: EvalResult, details: dict | None, console: Console, *, quiet: bool = False) -> None:
    """Print the health report of one result; `quiet` prints only the one-line verdict."""
    verdicts = verdicts_of(result)
    if quiet:
        console.print(verdict_line(result, verdicts), highlight=False)
        return
    details = details or {}
    console.print(_header(result))
    headline = {k: v for k, v in verdicts.items() if v.get("headline")}
    console.print(_verdict_table(result, headline, title="Health assessment"))
    console.print(_overall(verdicts))
    console.print(Text(dead_bound_sentence(result), style="dim"))
    secondary = {k: v for k, v in verdicts.items() if not v.get("headline")}
    if secondary:
        console.print(_verdict_table(result, secondary, title="Secondary checks"))
    console.print(_other_measurements(result, verdicts, console.width))
    routing = routing_table(result.routing)  # routed SAEs only
    if routing is not None:
        console.print(routing)
    histogram = _density_histogram(result, details)
    if histogram is not None:
        console.print(histogram)
    console.print(_advice(advise(result, details)))
    if result.notes:
        console.print(
            Panel(
                Text("\n".join(f"• {note}" for note in result.notes), style="dim"),
                title="Notes",
                title_align="left",
                border_style="dim",
            )
        )


def verdict_line(result: EvalResult, verdicts: dict) -> str:
    """One line: overall mark, 'N/4 metrics healthy', each headline metric's value and status, the SAE."""
    mark = (
        "[bold red]✘[/]"
        if is_unhealthy(verdicts)
        else ("[green]✔[/]" if _all_headline_healthy(verdicts) else "[yellow]◐[/]")
    )
    parts = []
    for key, v in verdicts.items():
        if not v.get("headline"):
            continue
        value = "not measured" if v["value"] is None else format_value(key, v["value"])
        if v["value"] is not None and (estimator := result.eval.absorption_estimator(key)):
            value += f" ({estimator})"
        parts.append(f"{key} {value} [{STATUS_STYLE[v['status']]}]{STATUS_MARK[v['status']]}[/]")
    return f"{mark} {headline_summary(verdicts)}: {', '.join(parts)} — {result.sae.path}"


def _all_headline_healthy(verdicts: dict) -> bool:
    return all(v["status"] == HEALTHY for v in verdicts.values() if v.get("headline"))


def _header(result: EvalResult) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in header_facts(result):
        grid.add_row(name, Text(value))  # Text: '[validation]' is data, not rich markup
    return Panel(grid, title="[bold]saehealth report[/]", title_align="left", border_style="blue")


def _verdict_table(result: EvalResult, verdicts: dict, *, title: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Standard")
    table.add_column("Status")
    for key, v in verdicts.items():
        status = v["status"]
        status_cell = Text(f"{STATUS_MARK[status]} {status}", style=STATUS_STYLE[status])
        if v.get("reason") and status == NOT_MEASURED:
            status_cell.append(f"\n{v['reason']}", style="dim")
        table.add_row(label(key), _value_cell(result, key, v), _standard_cell(v), status_cell)
    return table


def _value_cell(result: EvalResult, key: str, verdict: dict) -> Text:
    """Value ± uncertainty, and the latent count behind a fraction on a dim second line."""
    text = value_with_context(result, key, verdict)
    value, _, count = text.partition(" (")
    cell = Text(value)
    if count:
        cell.append(f"\n({count}", style="dim")
    return cell


def _standard_cell(verdict: dict) -> Text:
    """The healthy band, and the borderline zone on a dimmer second line (keeps the table narrow)."""
    cell = Text(str(verdict["band"]))
    borderline = verdict.get("borderline")
    if borderline and borderline != "—":
        cell.append(f"\nborderline {borderline}", style="dim")
    if verdict.get("estimator"):
        cell.append(f"\nset for {verdict['estimator']} probes", style="dim")
    return cell


def _overall(verdicts: dict) -> Text:
    summary = headline_summary(verdicts)
    if is_unhealthy(verdicts):
        return Text(f"Overall: {summary} ✘", style="bold red")
    if _all_headline_healthy(verdicts):
        return Text(f"Overall: {summary} ✔", style="bold green")
    return Text(f"Overall: {summary} ◐", style="bold yellow")


def _other_measurements(result: EvalResult, verdicts: dict, width: int) -> Group:
    """Unbanded measurements, two per row on a wide terminal; missing ones grouped by why."""
    table = Table(
        title="Other measurements",
        title_justify="left",
        title_style="bold",
        show_header=False,
        box=None,
        padding=(0, 1),
    )
    cells: list[tuple[str, str]] = []
    missing: dict[str, list[str]] = {}
    for key in OTHER_KEYS:
        if key in verdicts:
            continue
        value = result.metrics.get(key)
        if value is None:
            missing.setdefault(result.not_measured.get(key, "no reason recorded"), []).append(key)
        else:
            text = format_value(key, value, result.uncertainty.get(key))
            if estimator := result.eval.absorption_estimator(key):
                text += f" ({estimator})"
            cells.append((key, text))
    # Two pairs per row only where both fit whole: a value is never cut (names and values are no_wrap).
    widest = max((len(key) + len(text) for key, text in cells), default=0) + 8  # with padding and the gap
    per_row = 2 if 2 * widest <= width else 1
    for _ in range(per_row):
        table.add_column(style="bold", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(width=2)
    for i in range(0, len(cells), per_row):
        row: list = []
        for key, text in cells[i : i + per_row]:
            row += [key, text, ""]
        table.add_row(*row)
    lines = [Text(f"not measured ({reason}): {', '.join(keys)}", style="dim") for reason, keys in missing.items()]
    return Group(table, *lines)


def _density_histogram(result: EvalResult, details: dict) -> Panel | None:
    bins = density_bins(details, result.eval.tokens_scored)
    if bins is None:
        return None
    total = sum(n for _, n, _ in bins) or 1
    biggest = max(n for _, n, _ in bins) or 1
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", style="bold")
    grid.add_column()
    grid.add_column(justify="right")
    styles = {"dead": "red", "alive": "green", "dense": "yellow"}
    for name, n, kind in bins:
        cells = n / biggest * BAR_WIDTH
        bar = "█" * int(cells) + ("▌" if cells - int(cells) >= 0.5 else "")
        if n and not bar:
            bar = "▏"  # a non-empty bin never looks empty
        grid.add_row(name, Text(bar.ljust(BAR_WIDTH), style=styles[kind]), f"{n:,} ({100 * n / total:.1f}%)")
    return Panel(
        grid,
        title="[bold]Latent firing density[/] (log10 of the share of tokens a latent fires on)",
        title_align="left",
        subtitle="dead = never fired in T tokens; top bin = dense (> 10%)",
        border_style="dim",
    )


def _advice(findings: list[Finding]) -> Panel:
    blocks = []
    for finding in findings:
        style = SEVERITY_STYLE[finding.severity]
        head = Text(f"{SEVERITY_MARK[finding.severity]} {finding.title}", style=style)
        head.append(f"  [{finding.severity}]", style="dim")
        blocks.append(head)
        blocks.append(Padding(Text(finding.detail), (0, 0, 0, 2)))
        if finding.recommendation:
            blocks.append(Padding(Text("→ " + finding.recommendation, style="green"), (0, 0, 0, 2)))
        blocks.append(Text(""))
    return Panel(
        Group(*blocks[:-1]), title="[bold]Findings and recommendations[/]", title_align="left", border_style="blue"
    )


def print_thresholds(thresholds: Thresholds, console: Console, *, presets: list[Thresholds] | None = None) -> None:
    """Show a threshold set as a table (healthy / borderline / unhealthy per metric); list `presets` first."""
    if presets:
        listing = Table(title="Threshold presets", title_justify="left", title_style="bold", header_style="bold")
        listing.add_column("Name", style="bold")
        listing.add_column("Description")
        for preset in presets:
            listing.add_row(preset.name, preset.description)
        console.print(listing)
    source = "" if thresholds.source == "preset" else f" (from {thresholds.source})"
    table = Table(
        title=f"Thresholds '{thresholds.name}'{source}",
        caption=thresholds.description,
        title_justify="left",
        title_style="bold",
        header_style="bold",
    )
    table.add_column("Metric", overflow="fold", max_width=19)  # a long key folds: the bands keep their lines
    table.add_column("Healthy", style="green")
    table.add_column("Borderline", style="yellow")
    table.add_column("Unhealthy", style="red")
    table.add_column("Kind")
    for key in [*thresholds.headline(), *thresholds.secondary()]:
        band = thresholds.bands[key]
        kind = Text("headline" if key in thresholds.headline() else "secondary")
        if key in BAND_ESTIMATORS:  # an absorption band is set for one estimator: its probe schedule
            kind.append(f"\n{BAND_ESTIMATORS[key]}", style="dim")
        table.add_row(
            Text(key),
            Text(band.healthy_text()),
            Text(band.borderline_text()),
            Text(band.unhealthy_text()),
            kind,
        )
    console.print(table)
    console.print(
        Text(
            "Not measured is never healthy. Bounds are inclusive. Absorption bands name the probe schedule they "
            "were set for. A TOML/YAML file may set healthy_min, healthy_max, "
            'borderline_min, borderline_max for any metric (`extends = "default"` by default); '
            "`saehealth thresholds NAME --toml` prints a starting point.",
            style="dim",
        )
    )
