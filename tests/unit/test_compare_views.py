"""Views of several results: the terminal table at 80 columns (two lines per SAE), short names that still tell
SAEs apart, the depth order of hooks, the grouping of SAEs by hook."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from rich.console import Console

from saehealth.comparison import ComparedSAE, Comparison, by_hook, by_layer, hook_depth, shares_a_hook
from saehealth.report.compare_report import render_comparison_markdown
from saehealth.report.compare_terminal import comparison_table, short_names
from tests.unit.report_factory import make_result

SETTINGS = {
    "model": "gemma-2-2b",
    "dataset": "monology/pile-uncopyrighted",
    "split": "train",
    "n_tokens": 200_000,
    "tokens_scored": 199_000,
    "context_length": 1024,
    "seed": 42,
    "thresholds": "default",
}


def entry(name: str, hook: str, *, library: str = "saelens", architecture: str = "standard", d_sae: int = 1024):
    result = make_result(architecture=architecture, d_sae=d_sae)
    result.sae = dataclasses.replace(result.sae, hook_name=hook, source_library=library)
    return ComparedSAE(name, f"runs/{name}", result, Path("out") / name)


GEMMA = [
    entry(f"gemma-scope-2b-pt-res_layer_{layer}_width_16k_average_l0_{l0}", f"blocks.{layer}.hook_resid_post")
    for layer, l0 in ((12, 41), (0, 105), (0, 300), (1, 82))
]
MIXED = [
    entry(
        "dictionary_learning_sweep/trainer_0",
        "blocks.3.hook_resid_post",
        library="dictionary_learning",
        architecture="batchtopk",
        d_sae=16_384,
    ),
    entry("sae_lens_release/blocks.3.hook_resid_post", "blocks.3.hook_resid_post"),
    entry("sparsify_run/layers.3", "blocks.3.hook_mlp_out", library="sparsify", architecture="topk", d_sae=32_768),
]


def rendered(comparison: Comparison) -> list[str]:
    console = Console(width=80, record=True, color_system=None)
    console.print(comparison_table(comparison))
    return console.export_text().splitlines()


@pytest.mark.parametrize(("entries", "view"), [(GEMMA, "run"), (GEMMA, "comparison"), (MIXED, "comparison")])
def test_the_table_fits_80_columns_with_two_lines_per_sae(entries, view):
    comparison = Comparison(by_layer(entries) if view == "run" else entries, SETTINGS, Path("out"), view=view)
    lines = rendered(comparison)
    assert all(len(line.rstrip()) <= 80 for line in lines)
    rule = next(i for i, line in enumerate(lines) if "────" in line)
    body = lines[rule + 1 :]
    rows = body[: body.index(next(line for line in body if not line.strip()))]
    assert len(rows) == 2 * len(entries)  # each SAE on exactly two lines: name, then what tells it apart
    numbers = [line for line in rows if "0.980" in line]
    assert len(numbers) == len(entries) and all(line.rstrip().endswith(" 4/4") for line in numbers)


def test_what_differs_goes_under_the_name_and_what_is_shared_into_the_caption():
    text = "\n".join(rendered(Comparison(MIXED, SETTINGS, Path("out"))))
    assert "batchtopk, 16k" in text and "topk, 32k" in text  # architecture and width differ (hook, library too)
    assert "standard, 1k" in text
    gemma = "\n".join(rendered(Comparison(GEMMA, SETTINGS, Path("out"))))
    assert "all: standard, 1k latents, saelens" in gemma.replace("\n", " ")


def test_short_names_drop_shared_words_and_stay_distinct():
    names = [e.name for e in GEMMA]
    assert short_names(names) == ["12_41", "0_105", "0_300", "1_82"]
    assert short_names(["trainer_0", "trainer_1"]) == ["trainer_0", "trainer_1"]  # short enough already
    long = ["a_very_long_checkpoint_name_one", "a_very_long_checkpoint_name_two"]
    assert short_names(long) == ["one", "two"]
    assert short_names(["x" * 40]) == ["x" * 7 + "…" + "x" * 8]
    same_ends = ["prefix_" + "m" * 30 + "_a_suffix", "prefix_" + "m" * 30 + "_b_suffix"]
    assert short_names(same_ends) == ["a", "b"]
    collide = ["q" * 20 + "1" + "z" * 20, "q" * 20 + "2" + "z" * 20]  # one word each, ellipses would collide
    assert short_names(collide) == collide


def test_hooks_are_ordered_by_depth_within_a_layer():
    hooks = [
        "blocks.1.hook_resid_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_mid",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_pre",
        "ln_final.hook_normalized",
        "blocks.0.hook_resid_post",
        "blocks.1.mlp.hook_post",
        "hook_embed",
        "blocks.10.hook_resid_pre",
    ]
    assert sorted(hooks, key=hook_depth) == [
        "hook_embed",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_mid",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
        "blocks.10.hook_resid_pre",
        "ln_final.hook_normalized",
    ]


def test_saes_are_grouped_by_hook_in_depth_order_and_name_order():
    entries = [
        entry("ckpt_100000", "blocks.2.hook_resid_post"),
        entry("ckpt_20000", "blocks.2.hook_resid_post"),
        entry("pre", "blocks.2.hook_resid_pre"),
    ]
    groups = by_hook(entries)
    assert [(hook, [e.name for e in members]) for hook, members in groups] == [
        ("blocks.2.hook_resid_pre", ["pre"]),
        ("blocks.2.hook_resid_post", ["ckpt_20000", "ckpt_100000"]),
    ]
    assert shares_a_hook(entries) and not shares_a_hook(entries[1:])


def test_markdown_of_a_run_with_a_shared_hook_marks_the_frontier_among_rivals_only():
    rivals = [entry("a", "blocks.0.hook_resid_post"), entry("b", "blocks.0.hook_resid_post")]
    rivals[1].result.metrics["l0"] = 10.0  # b: lower L0, same loss recovered: b alone is on the frontier
    alone = entry("c", "blocks.1.hook_resid_post")
    markdown = render_comparison_markdown(Comparison(by_layer([*rivals, alone]), SETTINGS, Path("out"), view="run"))
    assert "[b](b/report.md) ★" in markdown and "[a](a/report.md) |" in markdown
    assert "[c](c/report.md) |" in markdown  # alone at its hook: no rival, no mark
    assert "## Metrics of each SAE, grouped by hook" in markdown
