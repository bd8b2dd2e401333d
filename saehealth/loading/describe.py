"""Rich tables describing what a checkpoint was detected as (for `saehealth inspect`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from saehealth.loading.base import LoadedSAE


def _text(value: Any) -> str:
    if value is None:
        return "[dim]not recorded[/]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def describe(loaded: LoadedSAE) -> Table:
    """One SAE: library, format, architecture, sizes, hook mapping, model, training facts and notes."""
    sae = loaded.sae
    table = Table(title=loaded.path or "SAE", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("library", loaded.source_library),
        ("format", loaded.format),
        ("architecture", loaded.architecture),
        ("SAELens class", type(sae).__name__),
        ("d_in", loaded.d_in),
        ("d_sae", loaded.d_sae),
    ]
    d_out = getattr(sae.cfg, "d_out", None)
    if d_out is not None:
        rows.append(("d_out", d_out))
    rows += [
        ("hook", loaded.hook_name),
        *([("output hook", loaded.output_hook_name)] if loaded.output_hook_name else []),
        *([("attention head", loaded.hook_head_index)] if loaded.hook_head_index is not None else []),
        ("model", loaded.model_name),
        ("context size", loaded.context_size),
        ("dataset", loaded.dataset_path),
        ("dtype / device", f"{sae.cfg.dtype} / {sae.cfg.device}"),
    ]
    trained = loaded.training_dtype()
    if trained is not None:
        rows.append(("trained in (default --dtype)", f"{trained[0]} ({trained[1]})"))
    if loaded.route is not None:
        from saehealth.routed.spec import describe_route

        rows += describe_route(loaded.route)
    for name, value in rows:
        table.add_row(name, _text(value))
    for key in sorted(loaded.training):
        table.add_row(f"training: {key}", _text(loaded.training[key]))
    for note in loaded.notes:
        table.add_row("note", note)
    return table


def summarize(items: list[LoadedSAE]) -> Table:
    """Several SAEs from one folder, one row each."""
    table = Table(title=f"{len(items)} SAEs", title_justify="left")
    for column in ("path", "format", "architecture", "d_in", "d_sae", "hook", "output hook"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            item.path or "?", item.format, item.architecture, str(item.d_in), str(item.d_sae),
            _text(item.hook_name), _text(item.output_hook_name) if item.output_hook_name else "",
        )  # fmt: skip
    return table
