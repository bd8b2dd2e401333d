"""The metric definitions every report carries (the "In every report" table of docs/metrics.md, which a test
keeps identical to this one), so a report read on its own says what its numbers mean."""

from __future__ import annotations

INTRODUCTION = (
    "Precisely, over the T unmasked positions (BOS, EOS and PAD are masked, and keep their original activation "
    "when the SAE is spliced in):"
)
# (metric keys, meaning); plain text: each renderer escapes it for its format.
DEFINITIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("explained_variance", "fvu"),
        "1 − Σ‖x − x̂‖² / Σ‖x − μ‖², pooled over all positions (SAELens ≥ 6.40's definition); FVU = 1 − that",
    ),
    (("mse",), "Σ‖x − x̂‖² / (T · d_in), per element (SAELens' `mse` is this × d_in)"),
    (("cossim", "l2_ratio"), "mean over tokens of cos(x, x̂) and ‖x̂‖/‖x‖"),
    (("relative_reconstruction_bias",), "Σ‖x̂‖² / Σ⟨x, x̂⟩ (below 1: shrinkage), pooled"),
    (
        ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation"),
        "mean next-token CE in nats over unmasked predicting positions (every position but a sequence's last)",
    ),
    (
        ("delta_ce", "loss_recovered"),
        "CE_sae − CE_clean; (CE_zero − CE_sae)/(CE_zero − CE_clean) (= SAELens/SAEBench `ce_loss_score`)",
    ),
    (("kl_div_with_sae", "kl_div_zero_ablation", "kl_div_score"), "mean KL(P_clean ‖ P_modified); 1 − KL_sae/KL_zero"),
    (("l0", "l1"), "mean number of non-zero latents per token; mean Σ|f|"),
    (
        ("dead_features", "dead_fraction"),
        "latents that never fired in T tokens (their rate is below 3/T with 95% confidence)",
    ),
    (("dense_features", "dense_fraction", "dense_features_1pct"), "latents firing on more than 10% (1%) of tokens"),
    (
        ("decoder_redundancy", "near_duplicate_latents"),
        "mean over latents of the max cosine to another decoder row; latents above 0.9",
    ),
    (
        ("absorption_fraction", "full_absorption_rate", "mean_num_split_features", "absorption_letters_scored"),
        "SAEBench 0.6's first-letter absorption (lower is better) under the probe schedule in "
        "`eval.absorption_probes` (default converged: to rank SAEs), over `eval.absorption_splits` independent word "
        "splits (each with its own prompts and probes): per letter, the absorption summed over the probe's true "
        "positives of every split divided by their number (SAEBench's row, pooled), then the mean over letters with a "
        "true positive; letters scored is the median over splits; null with the reason when fewer than "
        "`--absorption-min-letters` (default 20) letters have a probe with F1 > 0.6",
    ),
    (
        ("absorption_fraction_saebench",),
        "the same, under SAEBench's own probe schedule (saebench-0.6) on the same word splits: the number to compare "
        "with SAEBench's published tables, and the one written to SAEBench absorption files",
    ),
)
UNCERTAINTY = (
    "`uncertainty[key]` holds the standard error of loss recovered, ΔCE, KL score, explained variance and L0 "
    "(over sequences) and of `absorption_fraction` and `absorption_fraction_saebench` (the jackknife over word "
    "splits)."
)


def markdown_definitions() -> list[str]:
    """The definitions as markdown lines (a table; `|` escaped inside cells)."""
    lines = [INTRODUCTION, "", "| key | meaning |", "| --- | --- |"]
    for keys, meaning in DEFINITIONS:
        lines.append(f"| {', '.join(f'`{k}`' for k in keys)} | {meaning.replace('|', chr(92) + '|')} |")
    return [*lines, "", UNCERTAINTY]
