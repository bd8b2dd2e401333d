"""The replay's pieces against the model's own forward pass on the built-in model."""

from __future__ import annotations

import pytest
import torch

from saehealth.replay import ReplayCache, readout, replay_batch, splice_site


def _tokens(model, n=3, length=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (n, length), generator=g)


def _identity():
    return (lambda x: x), (lambda acts: acts)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "hook_embed"])
def test_final_residuals_through_the_readout_are_the_models_logits(builtin_model, hook):
    """Clean and spliced (identity SAE) final residuals, unembedded a tile at a time, equal model(tokens)."""
    tokens = _tokens(builtin_model)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        expected = builtin_model(tokens)
        out = replay_batch(builtin_model, splice_site(builtin_model, hook), [_identity()], tokens, mask, ReplayCache())
        logits = readout(builtin_model).logits
        assert logits(out.clean) == pytest.approx(expected, abs=1e-4)
        assert logits(out.saes[0].final) == pytest.approx(expected, abs=1e-4)


def test_zero_ablation_of_a_residual_is_shared_and_matches_the_hooked_model(builtin_model):
    tokens = _tokens(builtin_model)
    hook = "blocks.0.hook_resid_post"
    mask = torch.ones_like(tokens, dtype=torch.bool)
    cache = ReplayCache()
    with torch.no_grad():
        expected = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        out = replay_batch(builtin_model, splice_site(builtin_model, hook), [_identity()], tokens, mask, cache)
        assert out.zero.shape[0] == 1  # one sequence's worth, broadcast over the batch
        assert readout(builtin_model).logits(out.zero).expand_as(expected) == pytest.approx(expected, abs=1e-4)
        again = replay_batch(builtin_model, splice_site(builtin_model, hook), [_identity()], tokens, mask, cache)
        assert again.zero is out.zero


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
    site = splice_site(builtin_model, hook)
    assert site.kind == kind
    with torch.no_grad():
        expected = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        half = builtin_model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: 0.5 * act)])
        halve = (lambda x: x), (lambda x: 0.5 * x)
        out = replay_batch(builtin_model, site, [halve], tokens, torch.ones_like(tokens, dtype=torch.bool))
        logits = readout(builtin_model).logits
        assert logits(out.zero) == pytest.approx(expected, abs=1e-4)
        assert logits(out.saes[0].final) == pytest.approx(half, abs=1e-4)


def test_readout_applies_the_output_soft_cap(builtin_model, monkeypatch):
    tokens = _tokens(builtin_model)
    monkeypatch.setattr(builtin_model.cfg, "output_logits_soft_cap", 2.0)
    with torch.no_grad():
        expected = builtin_model(tokens)
        out = replay_batch(
            builtin_model,
            splice_site(builtin_model, "blocks.0.hook_resid_post"),
            [_identity()],
            tokens,
            torch.ones_like(tokens, dtype=torch.bool),
        )
        assert expected.abs().max() < 2.0
        assert readout(builtin_model).logits(out.clean) == pytest.approx(expected, abs=1e-4)


def test_a_transcoder_hook_that_never_fires_is_named(builtin_model):
    """hook_mlp_in exists but fires only with use_hook_mlp_in; the error names it instead of a KeyError."""
    from saehealth.errors import IncompatibleSAEError

    site = splice_site(builtin_model, "blocks.0.hook_mlp_out", input_hook="blocks.0.hook_mlp_in")
    tokens = _tokens(builtin_model)
    with pytest.raises(IncompatibleSAEError, match="hook_mlp_in' never fired"):
        replay_batch(builtin_model, site, [_identity()], tokens, torch.ones_like(tokens, dtype=torch.bool))
