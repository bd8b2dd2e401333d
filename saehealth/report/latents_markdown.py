"""report.md's "Latents to look at": a few latents of each group with their three strongest contexts
inline, the firing token in bold and its activation after it."""

from __future__ import annotations

from saehealth.latents.groups import LatentGroup
from saehealth.latents.tokens import visible
from saehealth.latents.view import Context, LatentCard, LatentView
from saehealth.report.text import format_activation, format_density

PER_GROUP = 3  # latents (pairs, letters) shown per group
CONTEXTS = 3  # contexts per latent
DEAD_IDS = 20  # dead latent ids listed
_MARKDOWN_SPECIAL = set("\\`*_[]<>|#~")


def latents_section(view: LatentView, folder_hint: str = "<folder>") -> list[str]:
    """The section's markdown lines."""
    lines = ["## Latents to look at", ""]
    if view.unavailable:
        return [*lines, f"No latent examples: {view.unavailable}.", ""]
    lines += [
        f"*Each latent's firing density, largest activation and strongest contexts (±10 tokens; the firing "
        f"token in bold, its activation after it). Every card is in report.html; any latent: "
        f"`saehealth latents {folder_hint} --id N`.*",
        "",
    ]
    lines += [f"*{note}*" for note in view.notes] + ([""] if view.notes else [])
    shown: list[list[int]] = []
    for group in view.groups:
        first = group.latents[:PER_GROUP]
        if group.key != "dead" and first in shown:
            continue  # e.g. the highest-density latents when they are the dense group's first ones
        shown.append(first)
        lines += [f"### {group.title}", "", group.finding + ".", ""]
        lines += _group_lines(group, view)
        lines.append("")
    return lines


def _group_lines(group: LatentGroup, view: LatentView) -> list[str]:
    if group.key == "dead":
        shown = ", ".join(str(i) for i in group.latents[:DEAD_IDS])
        more = f" and {group.total - DEAD_IDS:,} more" if group.total > DEAD_IDS else ""
        return [f"Ids: {shown}{more}." if group.latents else "None."]
    if group.pairs:
        lines = []
        for a, b, cosine in group.pairs[:PER_GROUP]:
            lines.append(f"- **Latents {a} and {b}**, decoder cosine {cosine:.3f}:")
            lines += [f"  {line}" for latent in (a, b) for line in _card_lines(view.cards.get(latent), latent, 1)]
        return lines
    if group.letters:
        lines = []
        for letter in group.letters[:PER_GROUP]:
            main = ", ".join(map(str, letter.main)) or "none"
            absorbing = ", ".join(map(str, letter.absorbing)) or "none found"
            lines.append(
                f"- **{letter.letter}**: absorption fraction {letter.fraction:.3f}; main latent(s) {main}; "
                f"absorbing {absorbing}:"
            )
            for latent in [*letter.main[:1], *letter.absorbing[:2]]:
                lines += [f"  {line}" for line in _card_lines(view.cards.get(latent), latent, 1)]
        return lines
    lines = []
    for latent in group.latents[:PER_GROUP]:
        lines += _card_lines(view.cards.get(latent), latent, CONTEXTS)
    return lines


def _card_lines(card: LatentCard | None, latent: int, contexts: int) -> list[str]:
    if card is None:
        return [f"- **Latent {latent}** (no card: see report.html or `saehealth latents`)"]
    facts = [f"density {format_density(card.density)}", f"max {format_activation(card.max)}"]
    if card.dense_kind is not None:
        facts.append(f"dense: {card.dense_kind.replace('_', ' ')}")
    if card.token_share is not None:
        facts.append(f"token-explained {card.token_share:.0%}")
    if card.promoted:
        facts.append(
            "promotes " + ", ".join(f"`{_code(visible(t, mark_leading_space=True))}`" for t, _ in card.promoted[:3])
        )
    lines = [f"- **Latent {latent}**: {' · '.join(facts)}"]
    lines += [f"  - {context_markdown(c)}" for c in card.top[:contexts]]
    return lines


def context_markdown(context: Context) -> str:
    """One context on one line: escaped text, the firing token in bold, its activation in parentheses."""
    if not any(context.tokens):
        return f"sequence {context.sequence}, position {context.position}: **{format_activation(context.value)}**"
    parts = []
    for i, token in enumerate(context.tokens):
        shown = visible(token)
        if i != context.focus:
            parts.append(_escape(shown))
            continue
        core = shown.lstrip(" ")
        lead = shown[: len(shown) - len(core)]
        if not core:  # a token of spaces only: bold needs something visible
            core, lead = "␣" * len(lead), ""
        parts.append(f"{lead}**{_escape(core)}** ({format_activation(context.value)})")
    return ("…" if context.before else "") + "".join(parts) + ("…" if context.after else "")


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else "&amp;" if ch == "&" else ch for ch in text)


def _code(text: str) -> str:
    return text.replace("`", "ˋ")
