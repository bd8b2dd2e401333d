"""Every model family end to end from a local Hugging Face folder, on tiny random models built in the test.

For GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, Qwen3, Gemma-2 and Gemma-3: the folder is named like another
model (TransformerLens would pick a hard-coded configuration from such a name: its config.json must decide),
saehealth's model computes the Hugging Face logits, and one SAE's numbers equal SAELens `run_evals` on the same
batches. On Llama and Gemma shapes `saehealth eval` also runs absorption and collects latent examples.
"""

from __future__ import annotations

import pytest
import torch

import saehealth
from saehealth.crosscheck import comparable, saelens_run_evals
from saehealth.data import load_dataset, sequence_batches
from saehealth.fused_gelu import gelu_tanh
from saehealth.replay import splice_site
from saehealth.scoring import score_batches
from tests.integration.model_families import FAMILIES, save_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOOK = "blocks.1.hook_resid_post"
CONTEXT, N_SEQUENCES, BATCH = 32, 8, 4
# A folder name holding the official names TransformerLens matches ("llama", "Meta-Llama-3-8B", "gemma-2-"):
# with names deciding, this loads a 32-layer Llama-3-8B configuration or skips config.json.
MISLEADING_NAME = "Meta-Llama-3-8B-gemma-2-2b-tiny"


def _topk_sae(model_name: str, d_in: int, seed: int = 1):
    """A TopK SAE with structured weights (encoder = decoderᵀ over unit rows): it reconstructs part of x, so
    CE and KL differences are neither 0 nor total."""
    from sae_lens import TopKSAE, TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    d_sae = 4 * d_in
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=16)
    cfg.metadata.model_name, cfg.metadata.hook_name, cfg.metadata.context_size = model_name, HOOK, CONTEXT
    sae = TopKSAE(cfg)
    sae.load_state_dict(
        {"W_enc": W_dec.T.clone(), "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_in)}
    )
    return sae.eval()


@pytest.fixture(scope="module")
def tokenizer():
    from saehealth import builtin

    return builtin.load_builtin_tokenizer()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_loads_replays_and_agrees_with_saelens(family, tmp_path, tokenizer):
    folder = tmp_path / MISLEADING_NAME
    hf_model = save_tiny_model(family, folder, tokenizer)
    model = saehealth.load_model(str(folder))
    assert model.cfg.n_layers == hf_model.config.num_hidden_layers  # its own config, not Llama-3-8B's 32

    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    batches = list(sequence_batches(dataset, model.tokenizer, CONTEXT, N_SEQUENCES, BATCH, 0))
    with torch.no_grad():
        ours_logits, theirs_logits = model(batches[0]), hf_model(batches[0]).logits
    assert (ours_logits - theirs_logits).abs().max() < 1e-4
    assert torch.equal(ours_logits.argmax(-1), theirs_logits.argmax(-1))

    sae = _topk_sae(str(folder), model.cfg.d_model)
    output = score_batches(model, [(splice_site(HOOK), sae)], batches)[0]
    assert not any(block.mlp.act_fn is gelu_tanh for block in model.blocks)  # GPT-2's fused GELU given back
    ours = output.metrics
    theirs = saelens_run_evals(model, sae, batches)
    # A random model predicts near-uniformly, but the three variants differ: the comparison says something.
    assert abs(ours["ce_loss_zero_ablation"] - ours["ce_loss_clean"]) > 1e-3 and ours["kl_div_with_sae"] > 1e-4
    for key, value in comparable(theirs).items():
        if key == "kl_div_score":
            # SAELens also counts each sequence's last position (1/32 of them here): saehealth's SAEBench-style
            # sums do too and agree; its own KL score leaves them out (METRICS.md).
            assert output.saebench["kl_div_score"] == pytest.approx(value, abs=1e-4), key
            assert ours[key] == pytest.approx(value, abs=5e-3), key
            continue
        assert ours[key] == pytest.approx(value, abs=1e-3, rel=1e-3), key


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_eval_runs_absorption_and_latent_examples(family, tmp_path, tokenizer):
    from saehealth.cli import main
    from saehealth.latents.contexts import evaluation_sequences
    from saehealth.latents.store import load_latents
    from saehealth.result import load_result

    folder = tmp_path / family
    hf_model = save_tiny_model(family, folder, tokenizer)
    sae_folder = tmp_path / "sae"
    _topk_sae(str(folder), hf_model.config.hidden_size).save_model(sae_folder)
    out = tmp_path / "out"
    main(
        ["eval", "--sae-path", str(sae_folder), "--dataset", saehealth.BUILTIN_DATASET, "--tokens", "1024"]
        + ["--examples", "5", "--out", str(out), "--quiet"]
    )
    result = load_result(out)
    assert result.eval.context_length == CONTEXT and result.eval.prepend_bos
    # Absorption ran on the model (a random model's first-letter probes are too weak for the rate itself).
    assert result.timing["absorption_s"] > 0 and result.metrics["absorption_letters_scored"] is not None
    latents, reason = load_latents(out, result.request)
    assert reason is None and latents.arrays["top_values"].shape == (4 * hf_model.config.hidden_size, 5)
    sequences = evaluation_sequences(result, 1)  # the evaluation's own tokens, recovered for the examples
    assert sequences.shape == (2, CONTEXT) and int(sequences[0, 0]) == tokenizer.bos_token_id
