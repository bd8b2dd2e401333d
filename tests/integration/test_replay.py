"""The replay's pieces against the model's own forward pass on the built-in model."""

from __future__ import annotations

import pytest
import torch

from saehealth.replay import ReplayCache, SiteGroup, readout, replay_batch, splice_site


def _tokens(model, n=3, length=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (n, length), generator=g)


class _Map:
    """A stand-in SAE whose reconstruction is `fn(x)`."""

    def __init__(self, fn):
        self.fn = fn

    def reconstruct(self, source, mask):  # noqa: ARG002
        return self.fn(source)


def _identity():
    return _Map(lambda x: x)


def _replay(model, hook, sae, tokens, mask, cache=None, **site):
    """The replay of one SAE at `hook`: (clean final, the site's zero final, the SAE's outputs)."""
    out = replay_batch(model, [SiteGroup(splice_site(hook, **site), [sae])], tokens, mask, cache)
    return out.clean, out.sites[0].zero, out.sites[0].saes[0]


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "hook_embed"])
def test_final_residuals_through_the_readout_are_the_models_logits(builtin_model, hook):
    """Clean and spliced (identity SAE) final residuals, unembedded a tile at a time, equal model(tokens)."""
    tokens = _tokens(builtin_model)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        expected = builtin_model(tokens)
        clean, _, sae = _replay(builtin_model, hook, _identity(), tokens, mask, ReplayCache())
        logits = readout(builtin_model).logits
        assert logits(clean) == pytest.approx(expected, abs=1e-4)
        assert logits(sae.final) == pytest.approx(expected, abs=1e-4)


def test_zero_ablation_of_a_residual_is_shared_and_matches_the_hooked_model(builtin_model):
    tokens = _tokens(builtin_model)
    hook = "blocks.0.hook_resid_post"
    mask = torch.ones_like(tokens, dtype=torch.bool)
    cache = ReplayCache()
    with torch.no_grad():
        expected = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        _, zero, _ = _replay(builtin_model, hook, _identity(), tokens, mask, cache)
        assert zero.shape[0] == 1  # one sequence's worth, broadcast over the batch
        assert readout(builtin_model).logits(zero).expand_as(expected) == pytest.approx(expected, abs=1e-4)
        _, again, _ = _replay(builtin_model, hook, _identity(), tokens, mask, cache)
        assert again is zero


@pytest.mark.parametrize(
    ("hook", "kind"),
    [
        ("blocks.0.hook_mlp_out", "mlp_out"),
        ("blocks.1.hook_mlp_out", "mlp_out"),
        ("blocks.0.hook_attn_out", "in_block"),
    ],
)
def test_zero_ablation_inside_a_block_matches_the_hooked_model(builtin_model, hook, kind):
    """mlp_out is replayed additively on resid_post (resid_post - x for the zero ablation); other in-block hooks
    restart their block. Either way the result is the model run with that hook zeroed."""
    tokens = _tokens(builtin_model)
    assert splice_site(hook).kind == kind
    with torch.no_grad():
        expected = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        half = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: 0.5 * act)])
        mask = torch.ones_like(tokens, dtype=torch.bool)
        _, zero, sae = _replay(builtin_model, hook, _Map(lambda x: 0.5 * x), tokens, mask)
        logits = readout(builtin_model).logits
        assert logits(zero) == pytest.approx(expected, abs=1e-4)
        assert logits(sae.final) == pytest.approx(half, abs=1e-4)


def test_readout_applies_the_output_soft_cap(builtin_model, monkeypatch):
    tokens = _tokens(builtin_model)
    monkeypatch.setattr(builtin_model.cfg, "output_logits_soft_cap", 2.0)
    with torch.no_grad():
        expected = builtin_model(tokens)
        mask = torch.ones_like(tokens, dtype=torch.bool)
        clean, _, _ = _replay(builtin_model, "blocks.0.hook_resid_post", _identity(), tokens, mask)
        assert expected.abs().max() < 2.0
        assert readout(builtin_model).logits(clean) == pytest.approx(expected, abs=1e-4)


def test_a_transcoder_hook_that_never_fires_is_named(builtin_model):
    """hook_mlp_in exists but fires only with use_hook_mlp_in; the error names it instead of a KeyError."""
    from saehealth.errors import IncompatibleSAEError

    tokens = _tokens(builtin_model)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with pytest.raises(IncompatibleSAEError, match="hook_mlp_in' never fired"):
        _replay(builtin_model, "blocks.0.hook_mlp_out", _identity(), tokens, mask, input_hook="blocks.0.hook_mlp_in")
