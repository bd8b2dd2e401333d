"""`saehealth.evaluate` on the built-in model with hand-set SAEs whose metrics are known exactly."""

from __future__ import annotations

import json

import pytest
import torch

import saehealth
from saehealth.errors import ConfigError
from saehealth.evaluation import evaluate
from saehealth.result import DETAILS_FILE, load_details
from tests.conftest import shifted_identity_sae

TOKENS = 4096  # 32 sequences of 128: seconds on CPU

# hook -> its width on the built-in model (d_model 128, 4 heads of 32, d_mlp 512)
HOOKS = {
    "blocks.0.hook_resid_pre": 128,
    "blocks.0.hook_resid_post": 128,
    "blocks.1.hook_resid_post": 128,  # the last layer: the continuation is only ln_final + unembed
    "blocks.0.hook_resid_mid": 128,
    "blocks.0.hook_attn_out": 128,
    "blocks.1.hook_mlp_out": 128,
    "blocks.0.mlp.hook_post": 512,
    "blocks.1.attn.hook_z": 128,
}


def _evaluate(path, out, **options):
    return evaluate(path, out=out, n_tokens=TOKENS, skip=("absorption",), **options)


@pytest.mark.parametrize("hook", HOOKS)
def test_perfect_reconstruction_recovers_everything(tmp_path, hook):
    path = shifted_identity_sae(tmp_path / "sae", HOOKS[hook], hook_name=hook, n_dead=16)
    result = _evaluate(path, tmp_path / "out")
    m = result.metrics
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-4)
    assert m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-5)
    assert m["kl_div_zero_ablation"] > 0.1  # zero ablation really changes the model
    assert m["dead_features"] == 16  # exactly the latents that can never fire
    assert m["dead_fraction"] == pytest.approx(16 / (HOOKS[hook] + 16))
    assert m["l0"] == pytest.approx(HOOKS[hook])
    assert m["dense_features"] == HOOKS[hook]


def test_half_scaled_decoder_shrinks_by_half(tmp_path):
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post", decoder_scale=0.5)
    m = _evaluate(path, tmp_path / "out").metrics
    assert m["l2_ratio"] == pytest.approx(0.5, abs=1e-4)
    assert m["cossim"] == pytest.approx(1.0, abs=1e-4)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5, abs=1e-4)
    assert 0 < m["loss_recovered"] < 1


def test_downstream_matches_a_plain_transformerlens_splice(tmp_path, builtin_model):
    """Independent check of the one-pass splice: run_with_hooks on full sequences, same tokens."""
    from saehealth.data import load_dataset, sequence_batches, special_token_mask
    from saehealth.loading import load_sae

    hook = "blocks.0.hook_mlp_out"
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name=hook, decoder_scale=0.7)
    result = _evaluate(path, tmp_path / "out", batch_size=8)
    sae = load_sae(path)
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    tokens = torch.cat(list(sequence_batches(dataset, builtin_model.tokenizer, 128, TOKENS // 128, 8, 42)))
    mask = special_token_mask(tokens, builtin_model.tokenizer)

    def splice(act, hook):  # noqa: ARG001
        return torch.where(mask[..., None], sae.decode(sae.encode(act)), act)

    with torch.no_grad():
        clean = builtin_model(tokens, return_type="loss", loss_per_token=True)
        spliced = builtin_model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, splice)]
        )
    predicting = mask[:, :-1]
    assert result.metrics["ce_loss_clean"] == pytest.approx(clean[predicting].double().mean().item(), rel=1e-5)
    assert result.metrics["ce_loss_with_sae"] == pytest.approx(spliced[predicting].double().mean().item(), rel=1e-5)


def test_one_attention_head_sae_reads_and_replaces_only_its_head(tmp_path, builtin_model):
    """SAELens `hook_head_index`: the SAE sees (batch, pos, d_head) of one head; the other heads stay."""
    hook, head = "blocks.1.attn.hook_z", 2
    perfect = _evaluate(
        shifted_identity_sae(tmp_path / "id", 32, hook_name=hook, hook_head_index=head), tmp_path / "o1"
    )
    assert perfect.sae.hook_head_index == head and perfect.sae.d_in == 32
    assert perfect.metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert perfect.metrics["delta_ce"] == pytest.approx(0.0, abs=1e-5)

    path = shifted_identity_sae(tmp_path / "half", 32, hook_name=hook, hook_head_index=head, decoder_scale=0.5)
    half = _evaluate(path, tmp_path / "o2", batch_size=8)
    assert half.metrics["l2_ratio"] == pytest.approx(0.5, rel=1e-5)
    # Independent check: halve that head alone with a plain TransformerLens hook on the same tokens.
    from saehealth.data import load_dataset, sequence_batches, special_token_mask

    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    tokens = torch.cat(list(sequence_batches(dataset, builtin_model.tokenizer, 128, TOKENS // 128, 8, 42)))
    mask = special_token_mask(tokens, builtin_model.tokenizer)

    def halve_head(act, hook):  # noqa: ARG001
        act = act.clone()
        act[:, :, head] = torch.where(mask[..., None], 0.5 * act[:, :, head], act[:, :, head])
        return act

    with torch.no_grad():
        spliced = builtin_model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, halve_head)]
        )
    expected = spliced[mask[:, :-1]].double().mean().item()
    assert half.metrics["ce_loss_with_sae"] == pytest.approx(expected, rel=1e-5)


def test_the_model_is_loaded_as_the_checkpoint_records(tmp_path, builtin_model, monkeypatch):
    """A SAELens checkpoint's model_from_pretrained_kwargs reach the model loader (which applies them)."""
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post")
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"].update(model_name="gpt2", model_from_pretrained_kwargs={"center_writing_weights": True})
    (path / "cfg.json").write_text(json.dumps(cfg))
    seen = []

    def fake_load_model(name, **options):  # stands in for gpt2: nothing is downloaded
        seen.append((name, options))
        return builtin_model

    monkeypatch.setattr("saehealth.evaluation.load_model", fake_load_model)
    result = _evaluate(path, tmp_path / "out", dataset=saehealth.BUILTIN_DATASET, split="validation")
    kwargs = {"center_writing_weights": True}
    # context: what the SAE needs (this one records none), so that a capped family's context can be lifted
    assert seen == [("gpt2", {"device": "cpu", "dtype": "float32", "from_pretrained_kwargs": kwargs, "context": None})]
    assert any("model_from_pretrained_kwargs" in note for note in result.notes)


def test_result_files_and_determinism(tmp_path):
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post", decoder_scale=0.8)
    first = _evaluate(path, tmp_path / "a")
    second = _evaluate(path, tmp_path / "b")
    assert first.metrics == second.metrics
    data = json.loads((tmp_path / "a" / "result.json").read_text())
    assert {"schema_version", "sae", "eval", "metrics", "verdicts", "provenance", "timing"} <= set(data)
    assert data["eval"]["tokens_scored"] < data["eval"]["n_tokens"]  # BOS positions are masked
    assert data["uncertainty"]["loss_recovered"] > 0
    details = load_details(tmp_path / "a" / "result.json")
    assert (tmp_path / "a" / DETAILS_FILE).is_file()
    assert details["feature_density"].shape == (128,)
    assert int(details["firing_counts"].sum()) == data["eval"]["tokens_scored"] * 128


def test_existing_result_is_reused_unless_forced(tmp_path):
    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post")
    out = tmp_path / "out"
    first = _evaluate(path, out)
    again = _evaluate(path, out)
    assert again.provenance.started_at == first.provenance.started_at  # loaded, not recomputed
    forced = _evaluate(path, out, force=True)
    assert forced.metrics == first.metrics


def test_a_retrained_checkpoint_is_evaluated_again_and_other_settings_are_refused(tmp_path):
    hook = "blocks.0.hook_resid_post"
    path, out = tmp_path / "sae", tmp_path / "out"
    first = _evaluate(shifted_identity_sae(path, 128, hook_name=hook), out)
    assert first.metrics["l2_ratio"] == pytest.approx(1.0, rel=1e-5)
    shifted_identity_sae(path, 128, hook_name=hook, decoder_scale=0.5)  # new weights, same path and settings
    second = _evaluate(path, out)
    assert second.metrics["l2_ratio"] == pytest.approx(0.5, rel=1e-5)
    assert json.loads((out / "result.json").read_text())["metrics"]["l2_ratio"] == pytest.approx(0.5, rel=1e-5)
    # A result saved before results recorded the weights is recomputed too, not trusted.
    saved = json.loads((out / "result.json").read_text())
    del saved["request"]["sae_weights"]
    (out / "result.json").write_text(json.dumps(saved))
    assert "sae_weights" in _evaluate(path, out).request
    assert "sae_weights" in json.loads((out / "result.json").read_text())["request"]  # written again
    with pytest.raises(ConfigError, match="other settings"):
        _evaluate(path, out, seed=7)


def test_more_tokens_than_the_dataset_holds_evaluates_all_and_says_so(tmp_path):
    from saehealth.builtin import read_corpus

    path = shifted_identity_sae(tmp_path / "sae", 128, hook_name="blocks.0.hook_resid_post")
    text = tmp_path / "small.txt"  # a local text file: one row per line
    text.write_text("\n".join(d["text"].replace("\n", " ") for d in read_corpus()[:3]))
    result = evaluate(
        path, out=tmp_path / "out", dataset=str(text), n_tokens=10_000_000, skip=("absorption", "geometry")
    )
    assert 0 < result.eval.n_tokens < 10_000_000
    assert result.eval.dataset == str(text)
    assert any("evaluated all of it" in note for note in result.notes)
    assert result.metrics["decoder_redundancy"] is None
    assert "skipped" in result.not_measured["decoder_redundancy"]
