"""`report.html` and `comparison.html`: one self-contained file each, rendered with Jinja2.

Everything is inline (styles, script, plots as base64 PNG, the latent cards as JSON), and the page's
Content-Security-Policy forbids any request, so it opens from a file:// URL or an e-mail attachment and
never reaches the network. Numbers are formatted by `report/text.py`, as in the markdown and terminal
reports. Text is escaped by Jinja2's autoescape (and the JSON by its `tojson` filter; the page's script
inserts it with textContent only).

The size stays bounded at any d_sae: only the latents of the view's cards (`--html-latents`, default 200)
carry contexts, and each group lists at most `LIST_LIMIT` ids.
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path

from saehealth.latents.tokens import visible
from saehealth.latents.view import Context, LatentCard, LatentView
from saehealth.output import atomic_write
from saehealth.report.definitions import DEFINITIONS, INTRODUCTION, UNCERTAINTY
from saehealth.report.diagnostics_report import KIND_NAMES, diagnostics_tables
from saehealth.report.plots import PLOTS
from saehealth.report.text import (
    SEVERITY_MARK,
    STATUS_MARK,
    comparison_header,
    dead_bound_sentence,
    format_activation,
    format_density,
    format_value,
    header_facts,
    label,
    measurement_rows,
    overall_status,
    standard_text,
    status_text,
    value_with_context,
)
from saehealth.result import EvalResult
from saehealth.verdicts import headline_summary, verdicts_of

REPORT_HTML = "report.html"
LIST_LIMIT = 2000  # ids listed per group in the page


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("saehealth.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_report_html(
    result: EvalResult,
    details: dict | None,
    latents: LatentView | None,
    images: dict[str, bytes] | None,
    findings: list | None = None,
    folder_hint: str = "<folder>",
) -> str:
    """The whole report page as a string (see the module docstring). `findings` default to `advise`'s."""
    from saehealth.advice import advise

    verdicts = verdicts_of(result)
    findings = advise(result, details) if findings is None else findings
    headline = {k: v for k, v in verdicts.items() if v.get("headline")}
    secondary = {k: v for k, v in verdicts.items() if not v.get("headline")}
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=Path(result.sae.path).name or result.sae.path,
            facts=header_facts(result),
            headline=_verdict_rows(result, headline),
            secondary=_verdict_rows(result, secondary),
            summary=headline_summary(verdicts),
            overall=overall_status(verdicts),
            dead_bound=dead_bound_sentence(result),
            findings=[
                {
                    "mark": SEVERITY_MARK[f.severity],
                    "severity": f.severity,
                    "title": f.title,
                    "detail": f.detail,
                    "recommendation": f.recommendation,
                }
                for f in findings
            ],
            plots=[(PLOTS[name][1], _data_uri(png)) for name, png in (images or {}).items()],
            latents=_latents_context(latents, folder_hint),
            diagnostics=diagnostics_tables(result),
            measurements=measurement_rows(result, verdicts),
            notes=result.notes,
            provenance=result.provenance,
            seed=result.eval.seed,
            batch_size=result.eval.batch_size,
            definitions=[(", ".join(keys), meaning) for keys, meaning in DEFINITIONS],
            definitions_intro=INTRODUCTION,
            definitions_uncertainty=UNCERTAINTY,
        )
    )


def write_report_html(folder: Path, html: str) -> Path:
    """Write `folder/report.html` atomically; return its path."""
    path = Path(folder) / REPORT_HTML
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return path


def render_comparison_html(comparison, images: dict[str, bytes]) -> str:
    """The page of several results side by side (a comparison, or a run's SAEs by layer): the table, the plots,
    and a link to each SAE's report.html."""
    from saehealth.comparison import frontier_names, healthy_count
    from saehealth.report.compare_plots import FRONTIERS, RUN_PLOTS
    from saehealth.report.trajectory_plot import TRAJECTORY_PLOT

    keys = comparison.summary_keys
    front = set(frontier_names(comparison))
    titles = {f"frontier_{key}": title for key, (_, title) in FRONTIERS.items()} | {
        key: title for key, (_, title) in RUN_PLOTS.items()
    }
    titles["trajectory"] = TRAJECTORY_PLOT[1]
    from saehealth.report.compare_differences import DIFFERENCES_PLOT, caption, difference_rows

    titles["differences"] = DIFFERENCES_PLOT[1]
    differences = comparison.differences
    if differences and differences["rows"]:
        header, table = difference_rows(differences)
        differences = {"reference": differences["reference"], "caption": caption(differences)}
        differences |= {"header": header, "rows": table}
    else:
        differences = None
    rows = []
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        healthy, total = healthy_count(r)
        report = entry.folder / REPORT_HTML
        rows.append(
            {
                "name": entry.name,
                "link": os.path.relpath(report, comparison.out) if report.is_file() else None,
                "library": r.sae.source_library,
                "architecture": r.sae.architecture,
                "hook": r.sae.where,
                "d_sae": f"{r.sae.d_sae:,}",
                "cells": [
                    (
                        format_value(key, r.metrics.get(key), r.uncertainty.get(key)),
                        verdicts.get(key, {}).get("status", ""),
                    )
                    for key in keys
                ],
                "healthy": f"{healthy}/{total}",
                "frontier": entry.name in front,
                "reused": entry.reused,
            }
        )
    s = comparison.settings
    return (
        _environment()
        .get_template("comparison.html.j2")
        .render(
            heading={"run": "SAE health of a run", "trajectory": "SAE health over training"}.get(
                comparison.view, "SAE comparison"
            ),
            title=f"{len(comparison.entries)} SAEs on {s['model']}",
            settings=s,
            identical=comparison.identical_tokens,
            headers=[comparison_header(key, [entry.result for entry in comparison.entries]) for key in keys],
            rows=rows,
            plots=[(titles[key], _data_uri(png)) for key, png in images.items()],
            notes=comparison.notes,
            differences=differences,
        )
    )


def write_comparison_html(out: Path, html: str, name: str = "comparison.html") -> Path:
    path = Path(out) / name
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return path


# ---------------------------------------------------------------------------------------------- helpers
def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _verdict_rows(result: EvalResult, verdicts: dict) -> list[dict]:
    return [
        {
            "label": label(key),
            "key": key,
            "value": value_with_context(result, key, v),
            "standard": standard_text(v),
            "status": v["status"],
            "mark": STATUS_MARK[v["status"]],
            "status_text": status_text(v),
        }
        for key, v in verdicts.items()
    ]


def _latents_context(view: LatentView | None, folder_hint: str) -> dict:
    if view is None:
        return {"unavailable": "latent examples were not loaded for this page", "groups": [], "data": {}}
    groups = []
    for group in view.groups:
        members = group.latents[:LIST_LIMIT]
        groups.append(
            {
                "key": group.key,
                "title": group.title,
                "finding": group.finding,
                "members": [(latent, latent in view.cards) for latent in members],
                "more": group.total - len(members),
                "pairs": [(a, b, f"{c:.3f}") for a, b, c in group.pairs],
                "letters": [
                    {"letter": x.letter, "fraction": f"{x.fraction:.3f}", "main": x.main, "absorbing": x.absorbing}
                    for x in group.letters
                ],
            }
        )
    dead = view.group("dead")
    data = {
        "cards": {str(latent): _card_data(card) for latent, card in view.cards.items()},
        "d_sae": view.d_sae,
        "dead": dead.latents[:LIST_LIMIT] if dead else [],
        "hint": f"saehealth latents {folder_hint} --id",
    }
    return {
        "unavailable": view.unavailable,
        "groups": groups,
        "data": data,
        "notes": view.notes,
        "lens_note": view.logit_lens_note,
        "cards": len(view.cards),
    }


def _card_data(card: LatentCard) -> dict:
    """A card as compact JSON: numbers as the report formats them, token shades as integers in −100..100."""
    scale = max((abs(a) for c in (*card.top, *card.sample) for a in c.activations if a is not None), default=0.0)
    facts = [
        ("density", format_density(card.density)),
        ("fired on", f"{card.firing_count:,} tokens"),
        ("mean activation", format_activation(card.mean)),
        ("max activation", format_activation(card.max)),
    ]
    if card.dense_kind is not None:
        facts.append(("dense kind", KIND_NAMES[card.dense_kind]))
    if card.token_share is not None:
        facts.append(("token-explained", f"{card.token_share:.0%}"))
    return {
        "facts": facts,
        "nearest": [card.nearest, f"{card.max_cosine:.3f}"]
        if card.nearest is not None and card.max_cosine is not None
        else None,
        "hist": [[f"{format_activation(lo)} – {format_activation(hi)}", n] for lo, hi, n in card.histogram],
        "layers": _layer_bars(card.layer_firings),
        "promoted": [[visible(t, mark_leading_space=True), format_activation(v)] for t, v in card.promoted],
        "suppressed": [[visible(t, mark_leading_space=True), format_activation(v)] for t, v in card.suppressed],
        "top": [_context_data(c, scale) for c in card.top],
        "sample": [_context_data(c, scale) for c in card.sample],
    }


def _layer_bars(firings: list[tuple[str, int]] | None) -> list[list]:
    """A routed SAE's latent: [hook, share of its firings there in %, firings] per routed layer ([] otherwise)."""
    total = sum(count for _, count in firings or [])
    return [[hook, round(100 * count / total, 1) if total else 0.0, count] for hook, count in firings or []]


def _context_data(context: Context, scale: float) -> dict:
    tokens = []
    for text, value in zip(context.tokens, context.activations, strict=True):
        shown = visible(text) if text else "·"
        if value is None or value == 0 or scale == 0:
            tokens.append([shown])
        else:
            tokens.append([shown, round(100 * value / scale), format_activation(value)])
    return {
        "v": format_activation(context.value),
        "f": context.focus,
        "t": tokens,
        "pre": context.before,
        "post": context.after,
        "at": f"sequence {context.sequence}, position {context.position}",
    }
