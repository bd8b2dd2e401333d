"""The advice rules (saehealth/advice/), each on a constructed result."""

from __future__ import annotations

import pytest
from report_factory import make_details, make_result, seed_003_result

from saehealth.advice import SEVERITIES, advise


def rules(findings) -> list[str]:
    return [f.rule for f in findings]


def by_rule(findings, rule):
    matches = [f for f in findings if f.rule == rule]
    assert matches, f"rule {rule!r} did not fire; fired: {rules(findings)}"
    return matches[0]


def test_healthy_result_gets_only_nothing_to_fix():
    result = make_result()
    findings = advise(result, make_details(result))
    assert rules(findings) == ["nothing_to_fix"]
    assert findings[0].severity == "ok" and findings[0].recommendation == ""
    assert "All 12 measured checks" in findings[0].detail


def test_nothing_to_fix_mentions_what_was_not_measured():
    result = make_result(
        {"absorption_fraction": None}, not_measured={"absorption_fraction": "skipped with --skip absorption"}
    )
    (finding,) = advise(result)
    assert finding.rule == "nothing_to_fix"
    assert "absorption_fraction (skipped with --skip absorption)" in finding.detail


def test_seed_003_findings_cite_their_numbers():
    result = seed_003_result()
    findings = advise(result, make_details(result, absorption=False))
    tokens = by_rule(findings, "too_few_training_tokens")
    assert tokens.severity == "critical"
    assert "500,000 tokens for 131,072 latents" in tokens.detail and "3.81 tokens per latent" in tokens.detail
    assert "131,072,000" in tokens.recommendation
    dead = by_rule(findings, "many_dead_latents")
    assert "116,431 of 131,072 latents (88.8%)" in dead.detail and "3/T = 0.00047" in dead.detail
    assert "lr 0.0001 → 5e-05" in dead.recommendation
    l0 = by_rule(findings, "l0_out_of_band")
    # 003 recommended *lowering* l1 while L0 was too high; more L1 penalty is what lowers L0.
    assert "L0 = 227" in l0.detail and "Raise `l1_coefficient` from 5 (e.g. to 10)" in l0.recommendation
    assert rules(findings).index("too_few_training_tokens") < rules(findings).index("l0_out_of_band")
    severities = [SEVERITIES.index(f.severity) for f in findings]
    assert severities == sorted(severities)


def test_enough_training_tokens_means_no_undertraining_finding():
    result = make_result({"dead_fraction": 0.5}, training={"training_tokens": 50_000_000})
    assert "too_few_training_tokens" not in rules(advise(result))


def test_few_tokens_but_healthy_is_nothing_to_fix():
    result = make_result(training={"training_tokens": 100_000})
    assert rules(advise(result)) == ["nothing_to_fix"]


def test_undertrained_suggests_a_smaller_dictionary_when_affordable():
    result = make_result({"loss_recovered": 0.5}, training={"training_tokens": 512_000}, d_sae=4096)
    finding = by_rule(advise(result), "too_few_training_tokens")
    assert finding.severity == "warning"  # 125 tokens per latent: bad, not catastrophic
    assert "shrink the dictionary to about 512 latents (expansion factor 4)" in finding.recommendation


@pytest.mark.parametrize(
    ("architecture", "training", "expected", "absent"),
    [
        ("standard", {}, "warm the L1 penalty up over the first steps (`l1_warm_up_steps`)", "aux_loss_coefficient"),
        ("topk", {"k": 64, "aux_loss_coefficient": 1 / 32}, "`aux_loss_coefficient`, now 0.03125", "switch to TopK"),
    ],
)
def test_dead_latents_advice_depends_on_architecture(architecture, training, expected, absent):
    result = make_result({"dead_fraction": 0.15}, architecture=architecture, training=training)
    finding = by_rule(advise(result), "many_dead_latents")
    assert finding.severity == "warning"  # borderline
    assert expected in finding.recommendation and absent not in finding.recommendation
    assert "154 of 1,024 latents (15.0%)" in finding.detail


@pytest.mark.parametrize(
    ("l0", "architecture", "training", "title", "expected"),
    [
        (10.0, "standard", {}, "L0 too low", "Lower `l1_coefficient` from 5 (e.g. to 2.5)"),
        (300.0, "gated", {"l1_coefficient": 0.8}, "L0 too high", "Raise `l1_coefficient` from 0.8 (e.g. to 1.6)"),
        (300.0, "topk", {"k": 300}, "L0 too high", "retrain with k inside 40–120, e.g. k = 69 (now k = 300)"),
        (8.0, "jumprelu", {"l0_coefficient": 2.0}, "L0 too low", "Lower the sparsity penalty `l0_coefficient` from 2"),
    ],
)
def test_l0_advice_names_the_knob_and_direction(l0, architecture, training, title, expected):
    result = make_result({"l0": l0}, architecture=architecture, training=training)
    finding = by_rule(advise(result), "l0_out_of_band")
    assert finding.title == title
    assert expected in finding.recommendation


def test_borderline_l0_is_info_not_warning():
    assert by_rule(advise(make_result({"l0": 150.0})), "l0_out_of_band").severity == "info"


def test_low_loss_recovered_with_good_variance():
    result = make_result({"loss_recovered": 0.55, "explained_variance": 0.9, "l2_ratio": 0.7})
    finding = by_rule(advise(result), "loss_vs_variance")
    assert finding.title == "Good reconstruction, poor downstream loss"
    assert "explains 90.0% of the variance" in finding.detail and "recovers only 0.55" in finding.detail
    assert "l2_ratio is 0.7" in finding.detail


def test_good_loss_recovered_with_poor_variance_or_delta_ce():
    result = make_result({"explained_variance": 0.4, "delta_ce": 0.5})
    finding = by_rule(advise(result), "loss_vs_variance")
    assert finding.title == "Loss recovered flatters this SAE"
    assert "explained_variance 0.4 (unhealthy" in finding.detail and "delta_ce 0.5 (unhealthy" in finding.detail


def test_unnormalised_activations_with_a_large_norm():
    # RMS norm ≥ √(mse·d_in/fvu) = √(10·128/0.15) ≈ 92, about 8× √128.
    result = make_result({"mse": 10.0}, training={"normalize_activations": "none", "l1_coefficient": 5.0})
    finding = by_rule(advise(result), "unnormalised_activations")
    assert finding.severity == "warning"
    assert "at least 92.4" in finding.detail and "8.16×" in finding.detail and "11.3" in finding.detail
    assert "expected_average_only_in" in finding.recommendation


def test_unnormalised_but_unit_scale_activations_are_fine():
    result = make_result(training={"normalize_activations": "none"})  # factory's norm is exactly √d_in
    assert rules(advise(result)) == ["nothing_to_fix"]


def test_unnormalised_without_a_norm_only_speaks_when_something_is_wrong():
    no_norm = {"mse": None}
    assert rules(advise(make_result(no_norm, training={"normalize_activations": "none"}))) == ["nothing_to_fix"]
    sick = make_result({**no_norm, "l0": 300.0}, training={"normalize_activations": "none"})
    finding = by_rule(advise(sick), "unnormalised_activations")
    assert finding.severity == "info" and "l0" in finding.detail


def test_many_near_duplicates():
    result = make_result({"near_duplicate_latents": 100, "decoder_redundancy": 0.75})
    finding = by_rule(advise(result, make_details(result)), "near_duplicates")
    assert "100 latents have a decoder direction with cosine > 0.9" in finding.detail
    assert "(9.8%)" in finding.detail and "0.75" in finding.detail
    assert "near-exact copies (cosine > 0.99)" in finding.detail
    assert finding.severity == "warning"


def test_short_evaluation_estimates_rare_latents_among_the_dead():
    result = make_result({"dead_fraction": 0.3}, tokens_scored=20_000)
    findings = advise(result, make_details(result, singletons=40))
    finding = by_rule(findings, "short_evaluation")
    assert "3/T = 0.00015" in finding.detail and "not below 1e-06 (the usual dead-latent threshold)" in finding.detail
    assert "40 latents fired exactly once" in finding.detail and "Chao1" in finding.detail
    assert "3,000,000 tokens" in finding.recommendation


def test_short_evaluation_uses_the_recorded_dead_threshold():
    result = make_result({"dead_fraction": 0.3}, tokens_scored=20_000, training={"dead_feature_threshold": 1e-3})
    assert "short_evaluation" not in rules(advise(result))  # 3/T = 1.5e-4 is already below 1e-3
    result = make_result({"dead_fraction": 0.3}, tokens_scored=20_000, training={"dead_feature_threshold": 1e-8})
    assert "the dead-feature threshold its training used" in by_rule(advise(result), "short_evaluation").detail


def test_short_evaluation_is_silent_when_dead_share_is_healthy():
    assert "short_evaluation" not in rules(advise(make_result(tokens_scored=5_000)))


def test_absorption_names_the_worst_letters():
    result = make_result({"absorption_fraction": 0.4})
    details = make_details(result)
    details["absorption_absorption_fraction"][2] = 0.9  # c
    finding = by_rule(advise(result, details), "absorption")
    assert finding.severity == "warning" and "worst letters c 0.90" in finding.detail
    assert "matryoshka_batchtopk" in finding.recommendation


def test_dense_latents_are_an_info_finding():
    finding = by_rule(advise(make_result({"dense_unexplained_fraction": 0.03})), "dense_latents")
    assert finding.severity == "info" and "31 latents fire on more than 10% of tokens" in finding.detail


def test_band_missed_without_a_rule_falls_back():
    (finding,) = advise(make_result({"kl_div_score": 0.85}))
    assert finding.rule == "outside_band" and "kl_div_score 0.85 (borderline" in finding.detail


def test_thresholds_shape_the_advice():
    result = make_result({"dead_fraction": 0.08}, thresholds="strict")
    assert "many_dead_latents" in rules(advise(result))
    assert "many_dead_latents" not in rules(advise(make_result({"dead_fraction": 0.08})))


def test_result_without_verdicts_is_assessed_with_the_default_preset():
    result = make_result({"l0": 300.0})
    result.verdicts = {}
    assert "l0_out_of_band" in rules(advise(result))
