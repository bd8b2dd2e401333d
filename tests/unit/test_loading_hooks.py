"""Foreign hook names mapped to TransformerLens hooks."""

from __future__ import annotations

import pytest

from saehealth.loading.hooks import map_dictionary_learning, map_hf_module


@pytest.mark.parametrize(
    ("name", "hook"),
    [
        ("layers.3", "blocks.3.hook_resid_post"),
        ("h.3", "blocks.3.hook_resid_post"),
        ("model.layers.11", "blocks.11.hook_resid_post"),
        ("gpt_neox.layers.2", "blocks.2.hook_resid_post"),
        ("layers.3.mlp", "blocks.3.hook_mlp_out"),
        ("h.0.mlp", "blocks.0.hook_mlp_out"),
        ("layers.3.self_attn", "blocks.3.hook_attn_out"),
        ("h.7.attn", "blocks.7.hook_attn_out"),
        ("layers.4.attention", "blocks.4.hook_attn_out"),
        ("h.2.mlp.act", "blocks.2.mlp.hook_post"),
        ("embed_tokens", "hook_embed"),
        ("wte", "hook_embed"),
    ],
)
def test_sae_hookpoints(name, hook):
    mapping = map_hf_module(name)
    assert mapping.hook_name == hook
    assert mapping.output_hook_name is None
    assert name in mapping.note


@pytest.mark.parametrize(
    ("name", "hook_in", "hook_out"),
    [
        ("layers.3.mlp", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
        ("h.1.mlp", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"),
        ("layers.3", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_post"),
        ("layers.0.self_attn", "blocks.0.ln1.hook_normalized", "blocks.0.hook_attn_out"),
        ("h.2.mlp.act", "blocks.2.mlp.hook_pre", "blocks.2.mlp.hook_post"),
    ],
)
def test_transcoder_hookpoints(name, hook_in, hook_out):
    mapping = map_hf_module(name, transcode=True)
    assert (mapping.hook_name, mapping.output_hook_name) == (hook_in, hook_out)


def test_mlp_transcoder_note_explains_the_layernorm_caveat():
    assert "before the LayerNorm weight and bias" in map_hf_module("layers.1.mlp", transcode=True).note


@pytest.mark.parametrize("name", ["layers.3.mlp.gate_proj", "lm_head", "layers.2.input_layernorm"])
def test_unknown_hookpoints_are_left_unset_with_a_note(name):
    mapping = map_hf_module(name)
    assert mapping.hook_name is None
    assert "--hook" in mapping.note


def test_module_input_for_io_in():
    assert map_hf_module("layers.5", io="in").hook_name == "blocks.5.hook_resid_pre"


@pytest.mark.parametrize(
    ("submodule", "layer", "hook"),
    [
        ("resid_post_layer_3", 3, "blocks.3.hook_resid_post"),
        ("mlp_out_layer_1", 1, "blocks.1.hook_mlp_out"),
        ("attn_out_layer_0", 0, "blocks.0.hook_attn_out"),
        ("resid_pre_layer_2", 2, "blocks.2.hook_resid_pre"),
        ("gpt_neox.layers.4", 4, "blocks.4.hook_resid_post"),
    ],
)
def test_dictionary_learning_names(submodule, layer, hook):
    assert map_dictionary_learning(submodule, layer).hook_name == hook


def test_dictionary_learning_falls_back_to_the_layer_with_a_note():
    mapping = map_dictionary_learning(None, 6)
    assert mapping.hook_name == "blocks.6.hook_resid_post"
    assert "assumed" in mapping.note
    assert map_dictionary_learning(None, None).hook_name is None
