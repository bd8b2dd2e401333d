"""The differences against the reference SAE in the comparison's reports: a table (terminal, markdown, HTML)
and a plot of each difference with its ±2 SE interval (comparison_differences.py computes them)."""

from __future__ import annotations

from matplotlib.figure import Figure
from rich.table import Table

DIFFERENCES_PLOT = ("differences.png", "Differences against the reference SAE, with ±2 paired standard errors")
LABELS = {
    "loss_recovered": "loss recovered",
    "explained_variance": "explained var.",
    "kl_div_score": "KL score",
    "delta_ce": "Δ CE",
    "l0": "L0",
    "next_token_agreement": "top-1 agreement",
}


def _cell(entry: dict) -> str:
    """'+0.0123 ± 0.0040' with '≈' in front when within noise; '–' when there is no difference."""
    difference, se = entry["difference"], entry["se"]
    if difference is None:
        return "–"
    digits = 2 if abs(difference) >= 10 else 4
    text = f"{difference:+.{digits}f}"
    if se is not None:
        text += f" ± {se:.{digits}f}"
    return ("≈ " if entry["within_noise"] else "") + text


def difference_rows(differences: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of plain-text cells: one row per SAE but the reference."""
    keys = differences["keys"]
    header = ["SAE", *(LABELS[key] for key in keys)]
    rows = [[row["name"], *(_cell(row[key]) for key in keys)] for row in differences["rows"]]
    return header, rows


def caption(differences: dict) -> str:
    """What the table shows, in one sentence (and why a standard error is missing)."""
    text = (
        f"Each SAE minus {differences['reference']}, ± one paired standard error (the same sequences, the delta "
        f"method over per-sequence totals of both); ≈ marks a difference within noise (at most "
        f"{differences['noise_se']:g} standard errors)."
    )
    if differences.get("not_paired"):
        text += f" Some differences have no standard error: {differences['not_paired']}."
    reasons = {
        entry["reason"]
        for row in differences["rows"]
        for key in differences["keys"]
        if (entry := row[key]).get("reason")
    }
    for reason in sorted(reasons):  # a routed SAE's loss recovered and KL score (comparison_differences.py)
        text += f" – marks a difference that is {reason}."
    return text


def differences_markdown(differences: dict | None) -> list[str]:
    if not differences or not differences["rows"]:
        return []
    header, rows = difference_rows(differences)
    lines = [f"## Differences against {differences['reference']}", "", caption(differences), ""]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def differences_table(differences: dict) -> Table:
    header, rows = difference_rows(differences)
    table = Table(title=f"Against {differences['reference']} (± paired SE; ≈ within noise)", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def differences_figure(differences: dict | None) -> Figure | None:
    """One panel per metric: each SAE's difference from the reference with a ±2 SE bar (grey when within noise)."""
    from saehealth.report.plots import BLUE, GREY, _figure

    if not differences or not differences["rows"]:
        return None
    keys = [k for k in differences["keys"] if any(r[k]["difference"] is not None for r in differences["rows"])]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows_needed = -(-len(keys) // cols)
    names = [row["name"] for row in differences["rows"]]
    fig, axes = _figure(3.2 * cols, 0.5 + (0.35 * len(names) + 1.0) * rows_needed, rows_needed, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for y, row in enumerate(differences["rows"]):
            entry = row[key]
            if entry["difference"] is None:
                continue
            color = GREY if entry["within_noise"] else BLUE
            error = 2 * entry["se"] if entry["se"] is not None else None
            ax.errorbar(entry["difference"], y, xerr=error, fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(LABELS[key], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    return fig


def replace_all_sentence(numbers: dict) -> str:
    """One line on the whole replacement (every SAE spliced in at once)."""

    def show(key: str, digits: int = 4) -> str:
        value = numbers.get(key)
        return "–" if value is None else f"{value:.{digits}f}"

    return (
        f"All {numbers['n_saes']} SAEs spliced in at once: loss recovered {show('loss_recovered')}, Δ CE "
        f"{show('delta_ce')} nats, KL {show('kl_div_with_sae')} nats (KL score {show('kl_div_score')})."
    )


def replace_all_markdown(numbers: dict | None) -> list[str]:
    if numbers is None:
        return []
    return [
        "## The whole replacement",
        "",
        replace_all_sentence(numbers)
        + " Each hook reads what the replaced hooks before it produce; the floor of loss recovered zero-ablates "
        "every hook at once.",
        "",
    ]
