"""The terminal view of several results side by side (`saehealth compare`, an eval of a run folder): one rich
table that stays readable at 80 columns.

Each SAE takes two lines: its (shortened) name, and under it, dimmed, what tells it apart from the others (the
hook of a run's SAE; in a comparison, whichever of library, architecture, width and hook differ). What every SAE
shares goes into the caption once. Both lines are cut with an ellipsis rather than wrapped, so a row never
grows past two lines; the markdown and HTML reports keep the full names.
"""

from __future__ import annotations

import re

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from saehealth.comparison import Comparison, healthy_count, short_hook
from saehealth.report.compare_report import (
    FRONTIER_MARK,
    REPORT_MD,
    REUSED_MARK,
    _caption,
    _front,
    _short,
    _title,
)
from saehealth.report.text import STATUS_STYLE
from saehealth.verdicts import verdicts_of

# Numeric headers on two lines: the terminal is narrower than a markdown page.
SHORT_HEADERS = {
    "l0": "L0",
    "loss_recovered": "loss\nrec.",
    "delta_ce": "ΔCE",
    "kl_div_score": "KL\nscore",
    "explained_variance": "expl.\nvar.",
    "dead_fraction": "dead",
    "dense_fraction": "dense",
    "absorption_fraction": "absorp-\ntion",
}
NAME_WIDTH = 16  # names longer than this are shortened in the terminal
DETAIL_WIDTH = 28  # the SAE column at most: what fits beside a run's eight metrics at 80 columns
_SEPARATORS = re.compile(r"([-_./ ]+)")


def print_comparison(comparison: Comparison, console: Console, *, quiet: bool = False) -> None:
    """The side-by-side table, the shared settings and where the files are; one line per SAE when quiet."""
    if quiet:
        for entry in comparison.entries:
            healthy, total = healthy_count(entry.result)
            console.print(f"{entry.name}: {healthy}/{total} healthy", highlight=False)
        return
    console.print(comparison_table(comparison))
    if comparison.differences and comparison.differences["rows"]:
        from saehealth.report.compare_differences import differences_table

        console.print(differences_table(comparison.differences))
    if comparison.replace_all is not None:
        from saehealth.report.compare_differences import replace_all_sentence

        console.print(replace_all_sentence(comparison.replace_all), highlight=False)
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    files = comparison.files
    console.print(
        f"Report: {files.get('markdown', comparison.out / REPORT_MD[comparison.view])}  JSON: {files.get('json')}\n"
        f"Per-SAE results and reports: {comparison.out}/<name>/",
        highlight=False,
    )


def comparison_table(comparison: Comparison) -> Table:
    """A rich table: one row of two lines per SAE, the headline numbers coloured by their verdicts."""
    entries = comparison.entries
    names = short_names([entry.name for entry in entries])
    details, shared = _distinguishing(comparison)
    caption = _caption(comparison)
    if shared:
        caption = f"all: {shared}   " + caption
    if names != [entry.name for entry in entries]:
        caption += "   names shortened (full names in the report)"
    table = Table(
        title=_title(comparison),
        caption=caption,
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    front = _front(comparison)
    rows = []
    for entry, name, detail in zip(entries, names, details, strict=True):
        r = entry.result
        verdicts = verdicts_of(r)
        marks = (f" {FRONTIER_MARK}" if entry.name in front else "") + (f" {REUSED_MARK}" if entry.reused else "")
        cell = Text(name + marks, no_wrap=True, overflow="ellipsis")
        if detail:
            cell.append("\n" + detail, style="dim")
        row = [cell]
        for key in comparison.summary_keys:
            status = verdicts.get(key, {}).get("status")
            row.append(Text(_short(key, r.metrics.get(key)), style=STATUS_STYLE.get(status, "")))
        healthy, total = healthy_count(r)
        row.append(Text(f"{healthy}/{total}", style="green" if healthy == total else "yellow"))
        rows.append(row)
    # Numbers are never cut: each numeric column keeps its widest cell, and only the SAE column gives way.
    table.add_column("SAE", overflow="ellipsis", min_width=10, max_width=DETAIL_WIDTH)
    headers = [SHORT_HEADERS[key] for key in comparison.summary_keys] + ["heal-\nthy"]
    for i, header in enumerate(headers, start=1):
        widest = max([len(part) for part in header.split("\n")] + [row[i].cell_len for row in rows])
        table.add_column(header, justify="right", no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*row)
    return table


def _distinguishing(comparison: Comparison) -> tuple[list[str], str]:
    """(per SAE, the facts that differ between SAEs, most telling first; the facts every SAE shares). A run shows
    each SAE's hook first; a comparison its architecture and width, then hook, then library (the first cut)."""
    facts = [
        {
            "architecture": r.sae.architecture,
            "width": _width(r.sae.d_sae),
            "hook": short_hook(r.sae.where),
            "library": r.sae.source_library,
        }
        for r in (entry.result for entry in comparison.entries)
    ]
    if not facts:
        return [], ""
    order = ("hook", "architecture", "width", "library") if comparison.view == "run" else tuple(facts[0])
    always = ("hook",) if comparison.view == "run" else ()
    varying = [k for k in order if k in always or len({f[k] for f in facts}) > 1]
    shared = ", ".join(facts[0][k] + (" latents" if k == "width" else "") for k in order if k not in varying)
    return [", ".join(f[k] for k in varying) for f in facts], shared


def _width(d_sae: int) -> str:
    """16384 -> '16k'; widths that are not a multiple of 1,024 in full."""
    return f"{d_sae // 1024}k" if d_sae >= 1024 and d_sae % 1024 == 0 else f"{d_sae:,}"


def short_names(names: list[str], width: int = NAME_WIDTH) -> list[str]:
    """Names that fit `width`, still telling the SAEs apart: unchanged when they all fit; else the words
    (split at - _ . / and spaces) that every name shares are dropped ('gemma-scope-2b-pt-res_layer_12_l0_41' ->
    '12_41' beside '0_105'), and a name still too long keeps its start and end around '…'. The original names
    come back whenever the short ones would collide."""
    if all(len(name) <= width for name in names):
        return list(names)
    candidates = [_without_common_words(names), names]
    for candidate in candidates:
        shortened = [_ellipsis(name, width) for name in candidate]
        if all(shortened) and len(set(shortened)) == len(shortened):
            return shortened
    return list(names)


def _without_common_words(names: list[str]) -> list[str]:
    if len(names) < 2:
        return list(names)
    split = [_SEPARATORS.split(name) for name in names]  # words at even indices, separators at odd ones
    common = set.intersection(*({part for part in parts[::2] if part} for parts in split))
    kept = []
    for parts in split:
        words = [(parts[i - 1] if i else "", parts[i]) for i in range(0, len(parts), 2) if parts[i]]
        words = [(sep, word) for sep, word in words if word not in common]
        kept.append(_join(words))
    return kept


def _join(words: list[tuple[str, str]]) -> str:
    """The kept words, each after the separator that preceded it in the name (none before the first)."""
    return "".join((sep if i else "") + word for i, (sep, word) in enumerate(words))


def _ellipsis(name: str, width: int) -> str:
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head) :]


__all__ = ["comparison_table", "print_comparison", "short_names"]
