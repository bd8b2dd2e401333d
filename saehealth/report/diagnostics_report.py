"""The diagnostics beyond the averages in a single SAE's reports: the tables that the markdown and HTML reports
both show (plain text cells; each renderer escapes them); the by-position plot is report/plots.py's.
docs/diagnostics.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays outside result's imports
    from saehealth.result import EvalResult

BY_POSITION_PANELS = (
    ("explained_variance", "explained variance"),
    ("l0", "L0"),
    ("delta_ce", "Δ CE (nats)"),
    ("kl_div", "KL to clean (nats)"),
)
KIND_NAMES = {
    "first_token": "first-token",
    "position": "position-tracking",
    "antipodal": "antipodal pair",
    "unexplained": "unexplained",
}


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def diagnostics_tables(result: EvalResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """[(title, header, rows)] for the reports: by position, dense-latent kinds, token-explained latents."""
    diagnostics = result.diagnostics or {}
    tables = []
    by_position = diagnostics.get("by_position")
    if by_position:
        keys = [key for key, _ in BY_POSITION_PANELS if key in by_position]
        header = ["positions", "tokens", *(label for key, label in BY_POSITION_PANELS if key in by_position)]
        rows = [
            [label, f"{tokens:,}", *(_number(by_position[key][i]) for key in keys)]
            for i, (label, tokens) in enumerate(zip(by_position["buckets"], by_position["tokens"], strict=True))
        ]
        trained = by_position.get("training_context")
        title = "By position" + (f" (the SAE was trained on contexts of {trained})" if trained else "")
        tables.append((title, header, rows))
    kinds = diagnostics.get("dense_kinds")
    if kinds and sum(kinds["counts"].values()):
        rows = [
            [KIND_NAMES[kind], str(count), ", ".join(map(str, kinds["latents"][kind][:12])) or "–"]
            for kind, count in kinds["counts"].items()
        ]
        tables.append(("Dense latents by kind (firing on more than 10% of tokens)", ["kind", "latents", "ids"], rows))
    token = diagnostics.get("token_explained")
    if token and token.get("live_latents"):
        share = token["token_detector_fraction"]
        rows = [
            [
                f"{token['token_detectors']:,} of {token['live_latents']:,}",
                _number(share),
                _number(token["median_share"]),
            ]
        ]
        header = [f"latents ≥ {token['bound']:.0%} explained by the token", "share", "median share"]
        tables.append(("Token-explained latents", header, rows))
    return tables
