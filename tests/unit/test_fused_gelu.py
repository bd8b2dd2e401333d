"""GPT-2's GELU is fused for the pass only: the same function, and the caller's model is left as it was."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import gelu_fast, gelu_new

from saehealth.fused_gelu import fused_gelu, gelu_tanh


def _model(act_fn: str) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=50, act_fn=act_fn
    )
    return HookedTransformer(cfg)


@pytest.mark.parametrize("unfused", [gelu_new, gelu_fast])
def test_the_fused_gelu_is_the_same_function(unfused):
    x = torch.randn(64, 512) * 3
    assert (gelu_tanh(x) - unfused(x)).abs().max() < 2e-6


def test_swapped_for_the_block_and_given_back():
    model = _model("gelu_new")
    tokens = torch.randint(0, 50, (3, 16))
    before = model(tokens)
    with fused_gelu(model) as swapped:
        assert swapped == 2
        assert all(block.mlp.act_fn is gelu_tanh for block in model.blocks)
        fused = model(tokens)
    assert all(block.mlp.act_fn is gelu_new for block in model.blocks)
    assert (fused - before).abs().max() < 1e-5


def test_given_back_when_the_block_raises():
    model = _model("gelu_new")
    with pytest.raises(RuntimeError), fused_gelu(model):
        raise RuntimeError("stop")
    assert all(block.mlp.act_fn is gelu_new for block in model.blocks)


def test_other_activations_are_left_alone():
    model = _model("relu")
    own = model.blocks[0].mlp.act_fn
    with fused_gelu(model) as swapped:
        assert swapped == 0
        assert model.blocks[0].mlp.act_fn is own
