"""The diagnostics beyond the averages on the built-in model with hand-set SAEs (docs/diagnostics.md)."""

from __future__ import annotations

import json
import math

import pytest

import saehealth
from saehealth.cli.main import main
from saehealth.compare import compare
from saehealth.evaluation import evaluate
from saehealth.result import load_details
from tests.conftest import shifted_identity_sae

TOKENS = 2048  # 16 sequences of 128
HOOK = "blocks.0.hook_resid_post"


def test_an_identity_sae_agrees_everywhere_at_every_position(tmp_path):
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name=HOOK, context_size=64)
    result = evaluate(path, out=tmp_path / "out", n_tokens=TOKENS, context_length=128, skip=("absorption",))
    m = result.metrics
    assert m["next_token_agreement"] == 1.0 and m["top5_overlap"] == 1.0
    by_position = result.diagnostics["by_position"]
    assert by_position["buckets"] == ["1", "2–3", "4–7", "8–15", "16–31", "32–63", "64–127", "128"]
    assert by_position["tokens"][0] == 0  # the BOS is masked
    assert sum(by_position["tokens"]) == result.eval.tokens_scored
    assert by_position["predicting"][-1] == 0  # the last position predicts nothing
    for ev in by_position["explained_variance"][1:]:
        assert ev == pytest.approx(1.0, abs=1e-6)
    for delta, kl in zip(by_position["delta_ce"][1:-1], by_position["kl_div"][1:-1], strict=True):
        assert abs(delta) < 1e-4 and abs(kl) < 1e-5
    assert by_position["l0"][1:] == [128.0] * 7  # every latent fires at every scored position
    # Evaluated at twice the training context: a note, and the plot's mark.
    assert by_position["training_context"] == 64
    assert any("beyond the SAE's training context (64)" in note for note in result.notes)
    # Every latent is dense; the token-explained shares exist for all of them.
    assert (
        m["dense_unexplained"]
        + sum(n for kind, n in result.diagnostics["dense_kinds"]["counts"].items() if kind != "unexplained")
        == 128
    )
    details = load_details(tmp_path / "out")
    assert details["token_explained_share"].shape == (128,)
    assert (tmp_path / "out" / "plots" / "by_position.png").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Diagnostics beyond the averages" in report and "| 64–127 |" in report


def test_compare_reports_paired_differences(tmp_path, capsys):
    identity = shifted_identity_sae(tmp_path / "identity", 128, hook_name=HOOK)
    copy = shifted_identity_sae(tmp_path / "copy", 128, hook_name=HOOK)
    half = shifted_identity_sae(tmp_path / "half", 128, hook_name=HOOK, decoder_scale=0.5)
    out = tmp_path / "cmp"
    comparison = compare(
        [str(identity), str(copy), str(half)], n_tokens=TOKENS, skip=("absorption",), out=out, examples=0
    )
    differences = comparison.differences
    assert differences["reference"] == "identity" and differences["not_paired"] is None
    rows = {row["name"]: row for row in differences["rows"]}
    same = rows["copy"]
    for key in differences["keys"]:
        assert same[key]["difference"] == pytest.approx(0.0, abs=1e-9), key
        assert same[key]["within_noise"] is True, key
    worse = rows["half"]["loss_recovered"]
    assert worse["difference"] < 0 and worse["within_noise"] is False
    # Paired: far below the standard error of two independent evaluations.
    a, b = (comparison.entries[i].result.uncertainty["loss_recovered"] for i in (0, 2))
    assert 0 < worse["se"] < math.hypot(a, b)
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["differences"]["rows"][1]["name"] == "half"
    assert "## Differences against identity" in (out / "comparison.md").read_text()
    assert (out / "differences.png").is_file()
    assert "Differences against identity" in (out / "comparison.html").read_text()
    # --reference picks another SAE; an unknown one is a one-line error before any work.
    args = ["compare", str(identity), str(half), "--tokens", str(TOKENS), "--skip", "absorption"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "bad"), "--reference", "nope", "--model", saehealth.BUILTIN_MODEL])
    assert exc.value.code == 1 and "--reference 'nope'" in capsys.readouterr().err
    again = compare(
        [str(identity), str(half)],
        n_tokens=TOKENS,
        skip=("absorption",),
        out=tmp_path / "r2",
        reference="half",
        examples=0,
    )
    assert again.differences["reference"] == "half"
    assert again.differences["rows"][0]["loss_recovered"]["difference"] == pytest.approx(-worse["difference"])


def test_the_pathological_ratio_and_its_switch(tmp_path):
    path = shifted_identity_sae(tmp_path / "half", 128, hook_name=HOOK, decoder_scale=0.5)
    on = evaluate(path, out=tmp_path / "on", n_tokens=TOKENS, skip=("absorption",), examples=0)
    off = evaluate(path, out=tmp_path / "off", n_tokens=TOKENS, skip=("absorption", "pathological"), examples=0)
    m = on.metrics
    assert m["kl_div_random"] > 0
    assert m["pathological_ratio"] == pytest.approx(m["kl_div_with_sae"] / m["kl_div_random"], rel=1e-9)
    assert on.uncertainty["pathological_ratio"] > 0
    assert off.metrics["pathological_ratio"] is None
    assert off.not_measured["pathological_ratio"] == "skipped with --skip pathological"
    for key in ("kl_div_with_sae", "loss_recovered", "explained_variance", "next_token_agreement"):
        assert off.metrics[key] == pytest.approx(m[key], rel=1e-6), key  # the check changes nothing else


def test_the_whole_replacement(tmp_path, capsys):
    # Identity SAEs at four hooks of three kinds: spliced in at once, the model is exactly the clean one.
    hooks = {"pre0": "blocks.0.hook_resid_pre", "post0": HOOK, "mlp1": "blocks.1.hook_mlp_out"}
    hooks["attn1"] = "blocks.1.hook_attn_out"
    paths = [str(shifted_identity_sae(tmp_path / name, 128, hook_name=hook)) for name, hook in hooks.items()]
    everything = compare(paths, n_tokens=TOKENS, skip=("absorption", "pathological"), out=tmp_path / "all",
                         examples=0, replace_all=True)  # fmt: skip
    whole = everything.replace_all
    assert whole["n_saes"] == 4
    assert abs(whole["delta_ce"]) < 1e-4 and whole["kl_div_with_sae"] < 1e-5
    assert whole["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert json.loads((tmp_path / "all" / "comparison.json").read_text())["replace_all"]["n_saes"] == 4
    assert "## The whole replacement" in (tmp_path / "all" / "comparison.md").read_text()
    # One SAE alone: its own single-SAE numbers.
    half = shifted_identity_sae(tmp_path / "half", 128, hook_name=HOOK, decoder_scale=0.5)
    alone = compare([str(half)], n_tokens=TOKENS, skip=("absorption", "pathological"), out=tmp_path / "one",
                    examples=0, replace_all=True)  # fmt: skip
    own = alone.entries[0].result.metrics
    for key in ("ce_loss_with_sae", "delta_ce", "loss_recovered", "kl_div_with_sae", "kl_div_score"):
        assert alone.replace_all[key] == pytest.approx(own[key], rel=1e-5, abs=1e-7), key
