"""Bands, presets, user threshold files and verdicts (saehealth/thresholds.py)."""

from __future__ import annotations

import math

import pytest

from saehealth.errors import ConfigError
from saehealth.thresholds import (
    HEADLINE_METRICS,
    Band,
    Thresholds,
    load_thresholds,
    preset_names,
    register_preset,
    thresholds_to_toml,
)
from saehealth.verdicts import assess, headline_summary, is_unhealthy

HEALTHY = {"loss_recovered": 0.9, "l0": 60.0, "dead_fraction": 0.01, "absorption_fraction": 0.1}


@pytest.mark.parametrize(
    ("key", "value", "status"),
    [
        # METRICS.md "Health verdicts": every boundary, and just past it.
        ("loss_recovered", 0.70, "healthy"),
        ("loss_recovered", 0.6999, "borderline"),
        ("loss_recovered", 0.60, "borderline"),
        ("loss_recovered", 0.5999, "unhealthy"),
        ("l0", 40, "healthy"),
        ("l0", 120, "healthy"),
        ("l0", 39.9, "borderline"),
        ("l0", 120.1, "borderline"),
        ("l0", 20, "borderline"),
        ("l0", 200, "borderline"),
        ("l0", 19.9, "unhealthy"),
        ("l0", 200.1, "unhealthy"),
        ("dead_fraction", 0.10, "healthy"),
        ("dead_fraction", 0.1001, "borderline"),
        ("dead_fraction", 0.20, "borderline"),
        ("dead_fraction", 0.2001, "unhealthy"),
        ("absorption_fraction", 0.25, "healthy"),
        ("absorption_fraction", 0.3, "borderline"),
        ("absorption_fraction", 0.35, "borderline"),
        ("absorption_fraction", 0.3501, "unhealthy"),
    ],
)
def test_default_preset_reproduces_metrics_md_table(key, value, status):
    verdict = assess({key: value})[key]
    assert verdict["status"] == status
    assert verdict["value"] == value
    assert verdict["headline"] is True


def test_default_band_texts_match_metrics_md():
    verdicts = assess(HEALTHY)
    assert [verdicts[k]["band"] for k in HEADLINE_METRICS] == ["≥ 0.70", "40 – 120", "≤ 0.10", "≤ 0.25"]
    assert [verdicts[k]["borderline"] for k in HEADLINE_METRICS] == [
        "0.60 – 0.70",
        "20 – 40 or 120 – 200",
        "0.10 – 0.20",
        "0.25 – 0.35",
    ]
    band = load_thresholds().bands["l0"]
    assert band.unhealthy_text() == "< 20 or > 200"
    assert verdicts["l0"]["healthy_range"] == [40, 120] and verdicts["l0"]["borderline_range"] == [20, 200]


def test_headline_metrics_come_first_then_secondary_checks():
    verdicts = assess({**HEALTHY, "explained_variance": 0.4, "kl_div_score": 0.85, "delta_ce": 0.05})
    keys = list(verdicts)
    assert tuple(keys[:4]) == HEADLINE_METRICS
    assert {
        "explained_variance",
        "kl_div_score",
        "delta_ce",
        "dense_unexplained_fraction",
        "near_duplicate_fraction",
    } <= set(keys)
    assert verdicts["explained_variance"]["status"] == "unhealthy"
    assert verdicts["kl_div_score"]["status"] == "borderline"
    assert verdicts["delta_ce"]["status"] == "healthy"
    assert not any(verdicts[k]["headline"] for k in keys[4:])


@pytest.mark.parametrize("missing", [None, float("nan"), float("inf")])
def test_not_measured_is_never_healthy(missing):
    reason = "only 12 letters had a probe with F1 > 0.6 (need 20)"
    verdicts = assess({**HEALTHY, "absorption_fraction": missing}, {"absorption_fraction": reason})
    verdict = verdicts["absorption_fraction"]
    assert verdict["status"] == "not measured"
    assert verdict["value"] is None
    assert verdict["reason"] == reason
    assert headline_summary(verdicts) == "3/4 metrics healthy"
    assert not is_unhealthy(verdicts)


def test_metric_absent_from_result_has_a_reason():
    verdicts = assess({"loss_recovered": 0.8})
    assert verdicts["l0"]["status"] == "not measured"
    assert verdicts["l0"]["reason"] == "not in the result"
    assert headline_summary(verdicts) == "1/4 metrics healthy"


def test_is_unhealthy_only_for_headline_metrics():
    assert not is_unhealthy(assess({**HEALTHY, "explained_variance": 0.1}))  # secondary: reported, not fatal
    assert not is_unhealthy(assess({**HEALTHY, "l0": 150}))  # borderline
    assert is_unhealthy(assess({**HEALTHY, "dead_fraction": 0.5}))
    assert headline_summary(assess({**HEALTHY, "dead_fraction": 0.5})) == "3/4 metrics healthy"


def test_near_duplicate_share_uses_d_sae_or_infers_it():
    metrics = {**HEALTHY, "near_duplicate_latents": 30, "dead_features": 0, "dead_fraction": 0.0}
    assert assess(metrics, d_sae=1000)["near_duplicate_fraction"]["value"] == pytest.approx(0.03)
    assert assess(metrics, d_sae=1000)["near_duplicate_fraction"]["status"] == "borderline"
    inferred = assess({**metrics, "dead_features": 50, "dead_fraction": 0.05})
    assert inferred["near_duplicate_fraction"]["value"] == pytest.approx(0.03)
    unknown = assess(metrics)["near_duplicate_fraction"]
    assert unknown["status"] == "not measured" and "d_sae" in unknown["reason"]
    assert assess({**metrics, "near_duplicate_latents": 0})["near_duplicate_fraction"]["value"] == 0.0
    skipped = assess(
        {**HEALTHY, "near_duplicate_latents": None}, {"near_duplicate_latents": "skipped with --skip geometry"}
    )
    assert skipped["near_duplicate_fraction"]["reason"] == "skipped with --skip geometry"


def test_dense_latents_are_never_unhealthy_by_default():
    assert assess({"dense_unexplained_fraction": 0.9})["dense_unexplained_fraction"]["status"] == "borderline"


def test_presets_differ_where_they_should():
    assert preset_names()[0] == "default"
    assert {"default", "strict", "lenient"} <= set(preset_names())
    metrics = {**HEALTHY, "loss_recovered": 0.80, "l0": 15, "dead_fraction": 0.15}
    default = assess(metrics, thresholds=load_thresholds("default"))
    strict = assess(metrics, thresholds=load_thresholds("strict"))
    lenient = assess(metrics, thresholds=load_thresholds("lenient"))
    assert (default["loss_recovered"]["status"], strict["loss_recovered"]["status"]) == ("healthy", "borderline")
    assert (default["l0"]["status"], lenient["l0"]["status"]) == ("unhealthy", "healthy")
    assert (default["dead_fraction"]["status"], lenient["dead_fraction"]["status"]) == ("borderline", "healthy")
    assert load_thresholds(None) is load_thresholds("default")


def test_registry_refuses_duplicate_preset_names():
    with pytest.raises(ValueError, match="already registered"):
        register_preset(Thresholds(name="default", bands={}))


def test_unknown_preset_lists_valid_ones_and_suggests():
    with pytest.raises(ConfigError, match="default, lenient, strict") as info:
        load_thresholds("stirct")
    assert "Did you mean 'strict'" in str(info.value)


def test_toml_file_changes_and_adds_bands(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'extends = "default"\n'
        "[loss_recovered]\nhealthy_min = 0.8\nborderline_min = 0.75\n"
        "[l0]\nhealthy_max = inf\nborderline_max = inf\n"
        "[cossim]\nhealthy_min = 0.9\nborderline_min = 0.8\n"
    )
    thresholds = load_thresholds(path)
    assert thresholds.name == "mine.toml" and thresholds.source == str(path)
    verdicts = assess({**HEALTHY, "loss_recovered": 0.78, "l0": 5000, "cossim": 0.7}, thresholds=thresholds)
    assert verdicts["loss_recovered"]["status"] == "borderline"
    assert verdicts["loss_recovered"]["band"] == "≥ 0.80"
    assert verdicts["l0"]["status"] == "healthy" and verdicts["l0"]["band"] == "≥ 40"
    assert verdicts["cossim"]["status"] == "unhealthy" and not verdicts["cossim"]["headline"]
    assert verdicts["dead_fraction"]["band"] == "≤ 0.10"  # untouched bands keep the preset's


def test_yaml_file_extends_another_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: strict\ndead_fraction:\n  healthy_max: 0.02\nl0:\n  borderline_max: null\n")
    thresholds = load_thresholds(str(path))
    assert thresholds.bands["dead_fraction"] == Band(healthy_max=0.02, borderline_max=0.10)
    assert thresholds.bands["loss_recovered"] == load_thresholds("strict").bands["loss_recovered"]
    assert assess({"l0": 10_000}, thresholds=thresholds)["l0"]["status"] == "borderline"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[loss_recoverd]\nhealthy_min = 0.8\n", "unknown metric 'loss_recoverd'. Did you mean 'loss_recovered'"),
        ("[foo]\nhealthy_min = 0.8\n", "Valid metrics: explained_variance, fvu"),
        ("[l0]\nhealthy_mn = 10\n", "unknown field 'healthy_mn'. Did you mean 'healthy_min'"),
        ("[l0]\nhealthy_min = 'ten'\n", "l0.healthy_min must be a number"),
        ("[l0]\nhealthy_min = true\n", "l0.healthy_min must be a number"),
        ("l0 = 5\n", "l0 must be a table"),
        ("[loss_recovered]\nhealthy_min = 0.5\n", "borderline_min 0.6 must be at or below healthy_min 0.5"),
        ("[l0]\nhealthy_min = 130\n", "healthy_min 130.0 is above healthy_max 120"),
        ("[l0\nhealthy_min = 1\n", "is not valid TOML"),
        ('extends = "nope"\n', "Unknown thresholds preset 'nope'"),
    ],
)
def test_bad_files_are_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_thresholds(path)
    assert message in str(info.value)


def test_malformed_yaml_missing_file_and_wrong_suffix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("l0: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_thresholds(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- l0\n")
    with pytest.raises(ConfigError, match="must be a table of metrics"):
        load_thresholds(listing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_thresholds(tmp_path / "missing.toml")
    other = tmp_path / "bands.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml or \.yml"):
        load_thresholds(other)


def test_empty_file_is_the_base_preset(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert dict(load_thresholds(path).bands) == dict(load_thresholds("default").bands)


@pytest.mark.parametrize("name", ["default", "strict", "lenient"])
def test_toml_export_round_trips(tmp_path, name):
    path = tmp_path / f"{name}.toml"
    path.write_text(thresholds_to_toml(load_thresholds(name)))
    assert dict(load_thresholds(path).bands) == dict(load_thresholds(name).bands)


def test_band_validation_and_texts():
    with pytest.raises(ConfigError):
        Band(healthy_min=0.5, borderline_min=0.6)
    with pytest.raises(ConfigError):
        Band(borderline_max=1.0)  # a bounded borderline around an unbounded healthy range
    band = Band(healthy_min=0.7)
    assert band.status(-math.inf) == "borderline" and band.unhealthy_text() == "—"
    assert Band(healthy_max=0.005).healthy_text() == "≤ 0.005"


def test_absorption_bands_name_the_estimator_they_were_set_for():
    verdicts = assess({**HEALTHY, "absorption_fraction": 0.27, "absorption_fraction_saebench": 0.27})
    converged, saebench = verdicts["absorption_fraction"], verdicts["absorption_fraction_saebench"]
    assert (converged["estimator"], converged["band"], converged["status"]) == ("converged", "≤ 0.25", "borderline")
    # SAEBench's schedule reads higher on the same SAE: its band is the converged one moved up by the gap.
    assert (saebench["estimator"], saebench["band"], saebench["status"]) == ("saebench-0.6", "≤ 0.275", "healthy")
    assert saebench["headline"] is False and verdicts["loss_recovered"]["estimator"] is None


def test_a_headline_measured_under_saebench_schedule_meets_that_schedules_band():
    metrics = {**HEALTHY, "absorption_fraction": 0.27, "absorption_fraction_saebench": 0.27}
    verdict = assess(metrics, absorption_schedule="saebench-0.6")["absorption_fraction"]
    assert (verdict["estimator"], verdict["band"], verdict["status"], verdict["headline"]) == (
        "saebench-0.6",
        "≤ 0.275",
        "healthy",
        True,
    )
    strict = assess(metrics, thresholds="strict", absorption_schedule="saebench-0.6")["absorption_fraction"]
    assert (strict["band"], strict["borderline"]) == ("≤ 0.175", "0.175 – 0.275")
