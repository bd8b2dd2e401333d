"""Latent examples end to end on the built-in model: collected in the pass, saved beside the result,
recovered from the evaluation's own sequences, rendered in report.md, report.html and `saehealth latents`."""

from __future__ import annotations

import json

import pytest
import torch

import saehealth
from saehealth.cli import main
from saehealth.errors import ConfigError
from saehealth.latents.contexts import evaluation_sequences
from saehealth.latents.store import LATENTS_FILE, load_latents
from saehealth.latents.view import load_view
from saehealth.metrics.logit_lens import logit_lens
from saehealth.result import load_result
from tests.integration.conftest import DENSE_LATENT, PLANTED_HOOK, TWIN_A, TWIN_B


def test_the_latents_file_matches_the_result(latent_report):
    _, out = latent_report
    result = load_result(out)
    latents, reason = load_latents(out, result.request)
    assert reason is None and result.request["examples"] == 20
    arrays = latents.arrays
    assert arrays["top_values"].shape == (512, 20) and arrays["sample_values"].shape == (512, 10)
    assert arrays["top_window"].shape == (512, 20, 21)
    assert latents.tokens == result.eval.tokens_scored
    from saehealth.result import load_details

    assert torch.equal(arrays["firing_counts"], load_details(out)["firing_counts"])
    assert int(arrays["firing_counts"][DENSE_LATENT]) == result.eval.tokens_scored  # fires everywhere


def test_recovered_tokens_are_the_ones_the_pass_saw(latent_report, builtin_model):
    """Re-encode the recovered sequences: each kept firing's activation, and its window's, are the stored ones."""
    from saehealth.data import special_token_mask
    from saehealth.loading import load_sae

    checkpoint, out = latent_report
    result = load_result(out)
    arrays = load_latents(out, result.request)[0].arrays
    sae = load_sae(checkpoint)
    latent = 7
    used = torch.cat([arrays["top_sequence"][latent], arrays["sample_sequence"][latent]])
    sequences = evaluation_sequences(result, int(used.max())).long()
    checked = 0
    for kind in ("top", "sample"):
        rows = zip(
            arrays[f"{kind}_sequence"][latent].tolist(),
            arrays[f"{kind}_position"][latent].tolist(),
            arrays[f"{kind}_values"][latent].tolist(),
            arrays[f"{kind}_window"][latent].float(),
            strict=True,
        )
        for seq, pos, value, window in rows:
            if seq < 0:
                continue
            tokens = sequences[seq : seq + 1]
            with torch.no_grad():
                acts = sae.encode(builtin_model(tokens, stop_at_layer=1))[0, :, latent]
            mask = special_token_mask(tokens, builtin_model.tokenizer)[0]
            assert float(acts[pos]) == pytest.approx(value, rel=1e-4, abs=1e-5)
            for offset in range(-10, 11):
                q = pos + offset
                if 0 <= q < tokens.shape[1] and mask[q]:
                    assert float(window[offset + 10]) == pytest.approx(float(acts[q]), rel=1e-2, abs=1e-2)
                else:
                    assert torch.isnan(window[offset + 10])
            checked += 1
    assert checked == 30


def test_logit_lens_is_the_folded_unembedding(builtin_model):
    """Through the final LayerNorm's scale and centring, as TransformerLens' fold_ln + centred W_U give it."""
    from saehealth.models import load_model

    folded = load_model(saehealth.BUILTIN_MODEL)
    folded.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    W_dec = torch.randn(6, 128)
    arrays, reason = logit_lens(builtin_model, W_dec, PLANTED_HOOK, top=5)
    assert reason is None
    expected = W_dec @ folded.W_U  # fold_ln multiplies W_U by ln_final.w and centres it over d_model
    top = expected.topk(5, dim=1)
    assert torch.equal(arrays["logit_lens_top_ids"], top.indices)
    torch.testing.assert_close(arrays["logit_lens_top_values"], top.values, rtol=1e-4, atol=1e-4)
    bottom = expected.topk(5, dim=1, largest=False)
    assert torch.equal(arrays["logit_lens_bottom_ids"], bottom.indices)


@pytest.mark.parametrize(
    ("hook", "has_lens"),
    [
        ("blocks.0.hook_mlp_out", True),
        ("blocks.0.attn.hook_z", True),
        ("blocks.0.mlp.hook_post", True),
        ("blocks.0.attn.hook_q", False),
        ("blocks.0.mlp.hook_pre", False),
    ],
)
def test_hooks_with_and_without_a_logit_lens(builtin_model, hook, has_lens):
    width = {"blocks.0.attn.hook_z": 128, "blocks.0.mlp.hook_post": 512}.get(hook, 128)
    arrays, reason = logit_lens(builtin_model, torch.randn(3, width), hook, top=4)
    assert (arrays is not None) == has_lens
    assert (reason is None) == has_lens
    if not has_lens:
        assert "does not write to the residual stream" in reason


def test_report_md_shows_latents_to_look_at(latent_report):
    _, out = latent_report
    report = (out / "report.md").read_text()
    section = report.split("## Latents to look at")[1].split("## All measurements")[0]
    assert "### Dense latents" in section and "### Near-duplicate latents" in section
    assert f"**Latent {DENSE_LATENT}**" in section
    assert f"**Latents {TWIN_A} and {TWIN_B}**, decoder cosine 1.000" in section
    assert "** (" in section  # a firing token in bold, its activation after it
    assert "metric definitions" in report and "METRICS.md" not in report


def test_report_html_is_self_contained(latent_report):
    _, out = latent_report
    html = (out / "report.html").read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for external in ('src="http', "src='http", 'href="http', "url(", "@import", "//cdn"):
        assert external not in html
    data = json.loads(html.split('<script type="application/json" id="latent-data">')[1].split("</script>")[0])
    assert str(DENSE_LATENT) in data["cards"] and str(TWIN_A) in data["cards"]
    assert data["d_sae"] == 512


def test_saehealth_latents_prints_cards(latent_report, capsys):
    _, out = latent_report
    main(["latents", str(out), "--id", str(TWIN_A), "--contexts", "2"])
    printed = capsys.readouterr().out
    assert f"Latent {TWIN_A}" in printed and "Top activations" in printed and "closest decoder 1" in printed
    main(["latents", str(out), "--group", "duplicates"])
    printed = capsys.readouterr().out
    assert f"Latents {TWIN_A} and {TWIN_B}: decoder cosine 1.000" in printed
    main(["latents", str(out)])
    assert "Dense latents" in capsys.readouterr().out


def test_html_latents_bounds_the_cards(latent_report, tmp_path):
    _, out = latent_report
    result = load_result(out)
    view = load_view(result, out, cards=3)
    assert len(view.cards) == 3
    assert {DENSE_LATENT, TWIN_A} <= set(view.cards)  # one from each group first


def test_examples_zero_collects_nothing_and_reuse_respects_it(tmp_path, capsys):
    from tests.integration.conftest import planted_topk_sae

    checkpoint = planted_topk_sae(tmp_path / "sae", d_sae=256)
    out = tmp_path / "out"
    common = ["eval", "--sae-path", str(checkpoint), "--tokens", "1024", "--out", str(out), "--skip", "absorption"]
    main([*common, "--quiet"])
    assert (out / LATENTS_FILE).is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a saved result with examples is not reused without them
        main([*common, "--examples", "0", "--quiet"])
    assert exit_info.value.code == 1 and "other settings" in capsys.readouterr().err
    main([*common, "--examples", "0", "--force", "--quiet"])
    assert not (out / LATENTS_FILE).exists()  # the stale file goes with the result it belonged to
    assert "No latent examples" in (out / "report.md").read_text()
    assert load_result(out).request["examples"] == 0
    with pytest.raises(ConfigError, match="--examples"):
        saehealth.evaluate(checkpoint, examples=-1)
    with pytest.raises(SystemExit) as exit_info:
        main(["latents", str(out)])
    assert exit_info.value.code == 1 and "No latent examples" in capsys.readouterr().err
