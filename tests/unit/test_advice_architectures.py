"""Every advice rule for each SAE architecture: what it recommends changing must exist in that architecture
(a TopK SAE has no sparsity penalty, a JumpReLU SAE's penalty is on L0, a standard or Gated SAE's on L1)."""

from __future__ import annotations

import pytest
from report_factory import make_details, make_result

from saehealth.advice import advise
from saehealth.advice.knobs import JUMPRELU, L1, TOPK, UNKNOWN, family

TRAINING = {
    "topk": {"k": 64, "aux_loss_coefficient": 1 / 32},
    "batchtopk": {"k": 64, "aux_loss_coefficient": 1 / 32},
    "jumprelu": {"l0_coefficient": 2.0, "jumprelu_init_threshold": 0.01},
    "gated": {"l1_coefficient": 0.8},
    "standard": {"l1_coefficient": 5.0},
}
# What each architecture's advice must say, and what it must never say, wherever it talks about sparsity.
SAYS = {
    "topk": ["k"],
    "batchtopk": ["k"],
    "jumprelu": ["l0_coefficient"],
    "gated": ["l1_coefficient"],
    "standard": ["l1_coefficient"],
}
NEVER = {
    "topk": ["l1_coefficient", "l0_coefficient", "sparsity penalty (", "strengthen the sparsity penalty"],
    "batchtopk": ["l1_coefficient", "l0_coefficient", "sparsity penalty (", "strengthen the sparsity penalty"],
    "jumprelu": ["l1_coefficient", "lower k", "raise k", "aux_loss_coefficient"],
    "gated": ["l0_coefficient", "lower k", "raise k", "aux_loss_coefficient"],
    "standard": ["l0_coefficient", "lower k", "raise k", "aux_loss_coefficient"],
}
ARCHITECTURES = list(TRAINING)


def finding(architecture, rule, metrics, training=None, details=False):
    # Only the architecture's own settings: the factory's default l1_coefficient would blur the check.
    result = make_result(
        metrics,
        architecture=architecture,
        training={"l1_coefficient": None, **TRAINING[architecture], **(training or {})},
    )
    found = [f for f in advise(result, make_details(result) if details else None) if f.rule == rule]
    assert found, f"{rule} did not fire for {architecture}"
    return found[0]


def check(architecture, text):
    for phrase in NEVER[architecture]:
        assert phrase not in text, (architecture, phrase, text)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_families(architecture):
    assert family(architecture) == {"topk": TOPK, "batchtopk": TOPK, "jumprelu": JUMPRELU}.get(architecture, L1)
    assert family("matryoshka_batchtopk") == TOPK and family("groupmax_transcoder") == TOPK
    assert family("jumprelu_transcoder") == JUMPRELU and family("mystery") == UNKNOWN


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_dense_latents(architecture):
    rec = finding(architecture, "dense_latents", {"dense_unexplained_fraction": 0.03}).recommendation
    check(architecture, rec)
    expected = {
        "topk": ["has no sparsity penalty to strengthen: lower k (now k = 64)", "`aux_loss_coefficient`, now 0.03125"],
        "batchtopk": ["a BatchTopK SAE has no sparsity penalty", "lower k (now k = 64)"],
        "jumprelu": ["raise the L0 penalty (`l0_coefficient`, now 2)", "`jumprelu_init_threshold`, now 0.01"],
        "gated": ["strengthen the sparsity penalty (`l1_coefficient`, now 0.8)"],
        "standard": ["strengthen the sparsity penalty (`l1_coefficient`, now 5)"],
    }[architecture]
    assert all(phrase in rec for phrase in expected), rec
    assert "--group dense" in rec


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_dead_latents(architecture):
    rec = finding(architecture, "many_dead_latents", {"dead_fraction": 0.3}).recommendation
    check(architecture, rec)
    expected = {
        "topk": "raise the AuxK auxiliary loss that revives dead latents (`aux_loss_coefficient`, now 0.03125)",
        "batchtopk": "raise the AuxK auxiliary loss",
        "jumprelu": "`pre_act_loss_coefficient`",
        "gated": "`l1_warm_up_steps`",
        "standard": "`l1_warm_up_steps`",
    }[architecture]
    assert expected in rec and "train longer" in rec.lower()


def test_dead_latents_name_the_auxk_setting_of_the_library():
    result = make_result({"dead_fraction": 0.3}, architecture="topk", training={"k": 32, "auxk_alpha": 0.03125})
    result.sae.source_library = "sparsify"
    (dead,) = [f for f in advise(result) if f.rule == "many_dead_latents"]
    assert "`auxk_alpha`, now 0.03125" in dead.recommendation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("l0", "direction"), [(300.0, "high"), (8.0, "low")])
def test_l0_out_of_band(architecture, l0, direction):
    f = finding(architecture, "l0_out_of_band", {"l0": l0})
    check(architecture, f.recommendation)
    assert f.title == f"L0 too {direction}"
    if family(architecture) == TOPK:
        assert "L0 is set by k" in f.recommendation and "(now k = 64)" in f.recommendation
        assert ("learns a threshold" in f.recommendation) == (architecture == "batchtopk")
    else:
        word = ("Raise" if direction == "high" else "Lower") + (
            " the sparsity penalty `l0_coefficient` from 2" if architecture == "jumprelu" else " `l1_coefficient`"
        )
        assert word in f.recommendation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_loss_vs_variance(architecture):
    poor_loss = finding(architecture, "loss_vs_variance", {"loss_recovered": 0.5, "explained_variance": 0.9})
    flattering = finding(architecture, "loss_vs_variance", {"explained_variance": 0.4})
    for f in (poor_loss, flattering):
        check(architecture, f.recommendation)
        assert any(word in f.recommendation for word in SAYS[architecture])
    phrase = {
        "topk": "raise k (now k = 64)",
        "batchtopk": "raise k (now k = 64)",
        "jumprelu": "lower the L0 penalty (`l0_coefficient`, now 2)",
        "gated": "lower the L1 penalty (`l1_coefficient`, now 0.8)",
        "standard": "lower the L1 penalty (`l1_coefficient`, now 5)",
    }[architecture]
    assert phrase in poor_loss.recommendation and phrase in flattering.recommendation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unnormalised_activations(architecture):
    f = finding(architecture, "unnormalised_activations", {"mse": 10.0}, {"normalize_activations": "none"})
    check(architecture, f.detail + f.recommendation)
    expected = {
        "topk": ("the learning rate and the AuxK loss act on this raw scale", "k does not depend on the scale"),
        "batchtopk": ("the learning rate and the AuxK loss", "re-tune the learning rate and the AuxK coefficient"),
        "jumprelu": ("the thresholds, the L0 penalty", "re-tune `l0_coefficient`, `jumprelu_init_threshold`"),
        "gated": ("the sparsity penalty (`l1_coefficient`, now 0.8)", "re-tune `l1_coefficient` and the lr"),
        "standard": ("the sparsity penalty (`l1_coefficient`, now 5)", "re-tune `l1_coefficient` and the lr"),
    }[architecture]
    assert expected[0] in f.detail and expected[1] in f.recommendation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_near_duplicates(architecture):
    f = finding(architecture, "near_duplicates", {"near_duplicate_latents": 100}, details=True)
    check(architecture, f.recommendation)
    assert ("resampling dead latents" in f.recommendation) == (family(architecture) == L1)
    assert "the closest pair is latents" in f.detail


@pytest.mark.parametrize("architecture", [*ARCHITECTURES, "matryoshka_batchtopk"])
def test_absorption(architecture):
    training = TRAINING.get(architecture, TRAINING["batchtopk"])
    result = make_result(
        {"absorption_fraction": 0.4}, architecture=architecture, training={"l1_coefficient": None, **training}
    )
    (f,) = [f for f in advise(result, make_details(result)) if f.rule == "absorption"]
    check(architecture if architecture in NEVER else "batchtopk", f.recommendation)
    if architecture == "matryoshka_batchtopk":
        assert "already a Matryoshka SAE" in f.recommendation and "`matryoshka_widths`" in f.recommendation
    else:
        assert "try a Matryoshka SAE" in f.recommendation


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rules_that_do_not_depend_on_the_architecture(architecture):
    """Too few tokens, a short evaluation and the fallback say the same for every architecture."""
    tokens = finding(architecture, "too_few_training_tokens", {"loss_recovered": 0.5}, {"training_tokens": 100_000})
    short = finding(architecture, "short_evaluation", {"dead_fraction": 0.3})
    assert "Train on at least 1,024,000 tokens" in tokens.recommendation
    assert "evaluate on more tokens (`--tokens`)" in short.recommendation
    (fallback,) = advise(make_result({"kl_div_score": 0.85}, architecture=architecture))
    assert fallback.rule == "outside_band"
