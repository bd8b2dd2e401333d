"""`saehealth latents`: latent cards in the terminal, drawn with rich from a result's latent view.

A card shows the latent's firing density and activations (a sparkline of its histogram), the tokens its
decoder direction promotes and suppresses, and its contexts: the firing's activation, then each token on a
background as strong as the latent's activation on it, the firing token bold and underlined.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from saehealth.errors import ConfigError, SaeHealthError, suggest
from saehealth.latents.groups import GROUP_KEYS, LatentGroup
from saehealth.latents.tokens import visible
from saehealth.latents.view import Context, LatentCard, LatentView, load_view
from saehealth.report.text import format_activation, format_density

SPARK = "▁▂▃▄▅▆▇█"
LISTED_IDS = 24  # ids per group in the overview


def show_latents(
    result_path: Path, console: Console, *, ids: list[int], group: str | None, limit: int = 5, contexts: int = 5
) -> None:
    """`saehealth latents`: cards of `ids`, else of a group's first `limit` latents, else the group overview."""
    from saehealth.result import load_result

    if group is not None and group not in GROUP_KEYS:
        raise ConfigError(
            f"No latent group {group!r}: choose from {', '.join(GROUP_KEYS)}.{suggest(group, GROUP_KEYS)}"
        )
    if limit < 1 or contexts < 0:
        raise ConfigError("--limit must be 1 or more and --contexts 0 or more.")
    result = load_result(result_path)
    folder = result_path if result_path.is_dir() else result_path.parent
    view = load_view(result, folder, cards=0)
    if view.unavailable:
        raise SaeHealthError(f"No latent examples in {folder}: {view.unavailable}.")
    if ids:
        view = load_view(result, folder, cards=0, ids=ids)
        for latent in ids:
            print_card(view.cards[latent], console, contexts)
    elif group is not None:
        chosen = view.group(group)
        if chosen is None:
            raise SaeHealthError(f"This result has no {group!r} group (its data was not measured).")
        members = [] if group == "dead" else chosen.latents[:limit]
        view = load_view(result, folder, cards=0, ids=members)
        print_group(view, view.group(group), console, members, contexts)
    else:
        print_overview(view, console, str(folder))
    for note in view.notes:
        console.print(f"[dim]{note}[/]", highlight=False)


def print_overview(view: LatentView, console: Console, folder: str) -> None:
    """Every group with its finding and first ids, and how to print cards."""
    for group in view.groups:
        console.print(Text(group.title, style="bold"), Text(f"— {group.finding}", style="dim"))
        console.print(Text("  " + _ids(group)))
    console.print(
        Text(
            f"Cards: saehealth latents {folder} --id N [--id M ...], or --group {'|'.join(g.key for g in view.groups)}",
            style="dim",
        )
    )


def print_group(view: LatentView, group: LatentGroup, console: Console, latents: list[int], contexts: int) -> None:
    """A group's finding and the cards of `latents` (its first members); dead latents as ids only."""
    console.print(Text(group.title, style="bold"), Text(f"— {group.finding}", style="dim"))
    if group.key == "dead":
        console.print(Text("  " + _ids(group)))
        return
    for a, b, cosine in group.pairs:
        if a in latents:
            console.print(Text(f"Latents {a} and {b}: decoder cosine {cosine:.3f}", style="bold"))
    for letter in group.letters:
        console.print(
            Text(
                f"{letter.letter}: absorption fraction {letter.fraction:.3f}; main {', '.join(map(str, letter.main)) or 'none'}; "
                f"absorbing {', '.join(map(str, letter.absorbing)) or 'none found'}"
            )
        )
    for latent in latents:
        print_card(view.cards[latent], console, contexts)


def print_card(card: LatentCard, console: Console, contexts: int = 5) -> None:
    """One latent's card."""
    facts = Text()
    facts.append("density ", style="bold").append(format_density(card.density))
    facts.append("  fired on ", style="bold").append(f"{card.firing_count:,} tokens")
    facts.append("  mean ", style="bold").append(format_activation(card.mean))
    facts.append("  max ", style="bold").append(format_activation(card.max))
    if card.nearest is not None and card.max_cosine is not None:
        facts.append("  closest decoder ", style="bold").append(f"{card.nearest} (cos {card.max_cosine:.3f})")
    if card.routed_layers is not None:
        facts.append("  routed layers ", style="bold").append(card.routed_layers)
    parts: list = [facts]
    if card.histogram:
        counts = [n for _, _, n in card.histogram]
        top = max(counts)
        spark = "".join(SPARK[min(len(SPARK) - 1, round((len(SPARK) - 1) * n / top))] if n else " " for n in counts)
        parts.append(
            Text.assemble(
                ("activations ", "bold"),
                (spark, "blue"),
                f"  {format_activation(card.histogram[0][0])} … {format_activation(card.histogram[-1][1])}",
            )
        )
    if card.promoted:
        parts.append(_lens("promotes", card.promoted))
        parts.append(_lens("suppresses", card.suppressed))
    if card.firing_count == 0:
        parts.append(Text("Never fired in the evaluation: no contexts.", style="dim"))
    if card.top:
        parts.append(Text("Top activations", style="bold"))
        parts += [context_text(c, card) for c in card.top[:contexts]]
    if card.sample:
        parts.append(Text("A uniform random sample of its firings", style="bold"))
        parts += [context_text(c, card) for c in card.sample[:contexts]]
    console.print(Panel(Group(*parts), title=f"[bold]Latent {card.latent}[/]", title_align="left", border_style="blue"))


def context_text(context: Context, card: LatentCard) -> Text:
    """One context: the firing's activation, then the tokens on a background shaded by the latent's
    activation, the firing token bold and underlined."""
    scale = max((abs(a) for a in context.activations if a is not None), default=0.0) or 1.0
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{format_activation(context.value):>7}  ", style="bold #b34700")  # first: long lines are cut
    if context.before:
        line.append("…", style="dim")
    if not any(context.tokens):
        line.append(f"sequence {context.sequence}, position {context.position}", style="dim")
    else:
        for i, (token, value) in enumerate(zip(context.tokens, context.activations, strict=True)):
            style = _shade(value / scale) if value else ""
            if i == context.focus:
                style = f"{style} bold underline".strip()
            line.append(visible(token), style=style)
    if context.after:
        line.append("…", style="dim")
    return line


def _shade(share: float) -> str:
    """A background from white to orange (positive) or blue (negative) by the activation's share."""
    share = max(-1.0, min(1.0, share))
    target = (255, 140, 0) if share >= 0 else (58, 110, 165)
    r, g, b = (round(255 + (c - 255) * abs(share)) for c in target)
    return f"black on rgb({r},{g},{b})"


def _lens(label: str, tokens: list[tuple[str, float]]) -> Text:
    line = Text.assemble((f"{label} ", "bold"))
    for i, (token, value) in enumerate(tokens):
        if i:
            line.append("  ")
        line.append(visible(token, mark_leading_space=True), style="on grey23")
        line.append(f" {format_activation(value)}", style="dim")
    return line


def _ids(group: LatentGroup) -> str:
    if not group.latents:
        return "none"
    shown = ", ".join(map(str, group.latents[:LISTED_IDS]))
    return shown + (f" and {group.total - LISTED_IDS:,} more" if group.total > LISTED_IDS else "")
