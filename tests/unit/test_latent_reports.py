"""The latent view and its renderers on hand-made data: token text, context windows, groups, the markdown
section, report.html (escaping, self-containment, size at any d_sae) and the metric definitions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from report_factory import make_details, make_result

from saehealth.errors import ModelError
from saehealth.latents.contexts import window_bounds
from saehealth.latents.groups import LatentGroup, LetterAbsorption, card_order, latent_groups
from saehealth.latents.tokens import TokenText, load_tokenizer, visible
from saehealth.latents.view import Context, LatentCard, LatentView
from saehealth.report.definitions import DEFINITIONS
from saehealth.report.html import LIST_LIMIT, render_report_html
from saehealth.report.latents_markdown import context_markdown, latents_section

METRICS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


# ---------------------------------------------------------------------------------------------- tokens
def test_visible_marks_what_would_be_invisible():
    assert visible("\n") == "↵" and visible("\t") == "→" and visible("\r") == "␍"
    assert visible("\x00a\x1b") == "␀a␛"
    assert visible(" foo") == " foo" and visible(" foo", mark_leading_space=True) == "␣foo"


def test_byte_level_pieces_decode_readably():
    text = TokenText(load_tokenizer("saehealth/tiny-pydoc-lm"))
    encode = text.tokenizer.encode
    assert [text.text(i) for i in encode(" foo\n", add_special_tokens=False)] == [" foo", "\n"]
    pieces = [text.text(i) for i in encode("é", add_special_tokens=False)]
    assert "".join(pieces) in ("é", "\ufffd\ufffd")  # one token, or two bytes that are not characters alone
    assert text.text(text.tokenizer.bos_token_id) == "<|endoftext|>"
    assert text.text(10**6) == "<1000000>"


def test_unknown_model_has_no_tokenizer():
    with pytest.raises(ModelError, match="tokenizer"):
        load_tokenizer("/no/such/model/folder")


# ---------------------------------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    ("position", "length", "bounds"),
    [(0, 128, (0, 11)), (3, 128, (0, 14)), (60, 128, (50, 71)), (127, 128, (117, 128)), (2, 4, (0, 4))],
)
def test_windows_are_cut_at_the_sequence_edges(position, length, bounds):
    assert window_bounds(position, length, 10) == bounds


# ---------------------------------------------------------------------------------------------- groups
def _groups_details(d_sae=64):
    result = make_result({"dead_fraction": 4 / d_sae, "near_duplicate_latents": 2}, d_sae=d_sae, tokens_scored=10_000)
    counts = np.arange(d_sae) * 3  # latent 0 dead
    counts[1:4] = 0  # 1-3 dead too
    counts[10] = 9000  # dense
    counts[11] = 2000  # dense
    best = np.full(d_sae, 0.3, np.float32)
    nearest = (np.arange(d_sae) + 1) % d_sae
    best[[20, 21]], nearest[[20, 21]] = 0.97, [21, 20]
    main = np.full((26, 10), -1)
    main[0, :2] = [30, 31]
    absorbing = np.full((26, 3), -1)
    absorbing[0, :1] = [32]
    fractions = np.full(26, np.nan)
    fractions[0], fractions[1] = 0.4, 0.0
    details = {
        "firing_counts": torch.as_tensor(counts),
        "max_decoder_cosine": torch.as_tensor(best),
        "nearest_decoder_latent": torch.as_tensor(nearest),
        "absorption_absorption_fraction": torch.as_tensor(fractions),
        "absorption_main_latents": torch.as_tensor(main),
        "absorption_absorbing_latents": torch.as_tensor(absorbing),
    }
    return result, details


def test_groups_each_point_at_their_finding():
    result, details = _groups_details()
    groups = {g.key: g for g in latent_groups(result, details)}
    assert list(groups) == [
        "dense",
        "dead",
        "duplicates",
        "absorption",
        "high",
        "low",
        "random",
    ]  # no token shares here
    assert groups["dense"].latents == [10, 11] and "dense_fraction" in groups["dense"].finding
    assert groups["dead"].latents == [0, 1, 2, 3] and "never fired in T = 10,000 tokens" in groups["dead"].finding
    assert groups["duplicates"].pairs == [(20, 21, pytest.approx(0.97))]
    (letter,) = groups["absorption"].letters
    assert (letter.letter, letter.main, letter.absorbing) == ("A", [30, 31], [32])
    assert groups["high"].latents[:2] == [10, 11] and groups["low"].latents[0] == 4
    assert len(groups["random"].latents) == 10 and not set(groups["random"].latents) & {0, 1, 2, 3}


def test_no_near_duplicates_shows_the_closest_pairs():
    result, details = _groups_details()
    details["max_decoder_cosine"][[20, 21]] = 0.5
    group = next(g for g in latent_groups(result, details) if g.key == "duplicates")
    assert group.title == "Closest decoder pairs" and len(group.pairs) == 3 and group.pairs[0][2] == pytest.approx(0.5)


def test_cards_come_from_every_group_in_turn_and_never_for_dead_latents():
    groups = [
        LatentGroup("dense", "", "", [1, 2, 3, 4]),
        LatentGroup("dead", "", "", [9, 10]),
        LatentGroup("random", "", "", [2, 5, 6]),
    ]
    assert card_order(groups, 4) == [1, 2, 3, 5]  # one from each group in turn, skipping repeats
    assert card_order(groups, 100) == [1, 2, 3, 5, 4, 6]


# ---------------------------------------------------------------------------------------------- renderers
def _context(tokens, focus, value=4.5, before=True, after=True):
    acts = [None if i == 0 else 0.5 for i in range(len(tokens))]
    acts[focus] = value
    return Context(3, 12, value, tokens, acts, focus, before, after)


def _card(latent, contexts=1, tokens=("a", " <b>", "*c|d*"), focus=1):
    return LatentCard(
        latent=latent,
        firing_count=10,
        density=0.01,
        mean=1.5,
        max=4.5,
        histogram=[(1.0, 1.41, 3), (1.41, 2.0, 7)],
        promoted=[(" the", 0.7)],
        suppressed=[("ing", -0.4)],
        top=[_context(list(tokens), focus) for _ in range(contexts)],
        sample=[],
        max_cosine=0.97,
        nearest=latent + 1,
    )


def test_markdown_context_bolds_the_firing_token_and_escapes_the_rest():
    line = context_markdown(_context(["x", " foo", "*a|b*", "\n"], 1))
    assert line == "…x **foo** (4.50)\\*a\\|b\\*↵…"
    spaces = context_markdown(_context(["x", "  ", "y"], 1, before=False, after=False))
    assert spaces == "x**␣␣** (4.50)y"


def test_markdown_section_lists_each_group():
    view = LatentView(
        groups=[
            LatentGroup("dense", "Dense latents", "dense_fraction 0.010: 1 latents fire", [5]),
            LatentGroup("dead", "Dead latents", "dead_fraction 0.500", list(range(100, 130))),
            LatentGroup("duplicates", "Near-duplicate latents", "pairs", [5, 6], pairs=[(5, 6, 0.97)]),
            LatentGroup(
                "absorption", "Absorbed letters", "absorbed", [7, 6], letters=[LetterAbsorption("S", 0.31, [7], [6])]
            ),
            LatentGroup("high", "Highest-density latents", "most often", [5]),  # the dense group's: not repeated
        ],
        cards={5: _card(5), 6: _card(6), 7: _card(7)},
    )
    text = "\n".join(latents_section(view))
    assert "- **Latent 5**: density 0.01 · max 4.50 · promotes `␣the`" in text
    assert "Ids: 100, 101" in text and "and 10 more." in text
    assert "- **Latents 5 and 6**, decoder cosine 0.970:" in text
    assert "- **S**: absorption fraction 0.310; main latent(s) 7; absorbing 6:" in text
    assert "Highest-density" not in text
    unavailable = latents_section(LatentView(unavailable="evaluated with --examples 0"))
    assert "No latent examples: evaluated with --examples 0." in unavailable


def _page(view, result=None):
    result = result or make_result()
    return render_report_html(result, make_details(result), view, {"density": b"\x89PNG fake"})


def test_report_html_escapes_every_text_and_requests_nothing():
    view = LatentView(
        groups=[LatentGroup("dense", "Dense <latents>", "finding & <b>", [5])],
        cards={5: _card(5, tokens=("a", "</script><script>alert(1)</script>", "b"))},
        d_sae=1024,
    )
    page = _page(view, make_result(notes=["<img src=x onerror=alert(1)>"]))
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "Dense &lt;latents&gt;" in page and "finding &amp; &lt;b&gt;" in page
    assert "\\u003c/script\\u003e" in page  # inside the JSON: no way out of its script element
    data = json.loads(page.split('id="latent-data">')[1].split("</script>")[0])
    assert data["cards"]["5"]["top"][0]["t"][1][0] == "</script><script>alert(1)</script>"
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == []  # every image inline, links in-page only
    assert "default-src 'none'" in page and "data:image/png;base64," in page


def test_report_html_stays_small_at_any_width():
    d_sae, dead = 1_048_576, 900_000
    tokens = tuple(f" tok{i}" for i in range(21))
    cards = {i: _card(i, contexts=20, tokens=tokens, focus=10) for i in range(200)}
    for card in cards.values():
        card.sample = list(card.top[:10])
    view = LatentView(
        groups=[
            LatentGroup("dense", "Dense latents", "many", list(range(50_000))),
            LatentGroup("dead", "Dead latents", "many", list(range(dead))),
        ],
        cards=cards,
        d_sae=d_sae,
    )
    page = _page(view, make_result(d_sae=d_sae))
    assert len(page.encode()) < 10 * 2**20
    data = json.loads(page.split('id="latent-data">')[1].split("</script>")[0])
    assert len(data["dead"]) == LIST_LIMIT and f"and {dead - LIST_LIMIT:,} more" in page


def test_report_html_without_latent_examples_says_why():
    page = _page(LatentView(unavailable="evaluated with --examples 0"))
    assert "No latent examples: evaluated with --examples 0." in page and "latent-data" not in page


def test_metric_definitions_match_the_docs():
    section = METRICS_PAGE.read_text().split("## In every report")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    readme = [
        (tuple(re.findall(r"`([^`]+)`", keys)), meaning.replace("\\|", "|"))
        for keys, meaning in (row[2:-2].split(" | ", 1) for row in rows)
    ]
    assert readme == list(DEFINITIONS)
