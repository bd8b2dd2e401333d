"""The routed pass on the built-in model (2 layers, d = 128) with hand-set shared SAEs: exact answers.

Routed hooks: blocks.0.hook_resid_post and blocks.1.hook_resid_post, given explicitly (the built-in model cannot
follow the authors' n//4 … 3n//4). The references below are written with plain TransformerLens hooks and torch,
independently of saehealth's routed code.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from saehealth.data import special_token_mask
from saehealth.loading import load_checkpoint
from saehealth.loading.convert import build_sae
from saehealth.loading.signed_topk import SIGNED_TOPK
from saehealth.replay import readout, splice_site
from saehealth.routed.passes import encode_decode, resolve_site, routed_batch
from saehealth.routed.router import with_routes
from saehealth.routed.scoring import score_routed, score_routed_plan
from saehealth.scoring import score_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
D = 128
EPS = 1e-6


def _state(router, scale=1.0, pre_bias=None, latent_bias=None) -> dict:
    eye = torch.eye(D)
    return {
        "router.weight": router,
        "sae.pre_bias": torch.zeros(D) if pre_bias is None else pre_bias,
        "sae.latent_bias": torch.zeros(2 * D) if latent_bias is None else latent_bias,
        "sae.encoder.weight": torch.cat([eye, -eye]),  # W_enc = [I, −I]
        "sae.decoder.weight": torch.cat([eye, -eye], 1) * scale,  # W_dec = scale·[I; −I]
    }


def _load(tmp_path, state, k=D, route=""):
    path = tmp_path / f"sum_hard_K{k}_builtin_test_{2 * D}.pt"
    torch.save(state, path)
    return load_checkpoint(path, hook=",".join(HOOKS), route=route or None)


def _mixed_router(seed=0) -> torch.Tensor:
    a = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return torch.stack([a, -a])  # logits ±a·v: the sign of a·v picks the layer


@pytest.fixture(scope="module")
def tokens(builtin_model):
    from saehealth.data import load_dataset, sequence_batches

    data = load_dataset("saehealth/pydoc-corpus", "validation")
    return next(iter(sequence_batches(data, builtin_model.tokenizer, 32, 4, 4, 0)))


def _reference_routes(model, tokens, router, aggregation="sum"):
    """(i*, p*) per token, from a plain cache: per-token LN of each routed layer, pooled, router, softmax."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in HOOKS)
    normed = []
    for hook in HOOKS:
        x = cache[hook]
        mu, sd = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        normed.append((x - mu) / (sd + EPS))
    v = sum(normed) if aggregation == "sum" else sum(normed) / len(normed)
    p = torch.softmax(v @ router.T, dim=-1)
    weight, layer = p.max(-1)
    return layer, weight


def _reference_logits(model, tokens, mask, layer, replace):
    """The model's logits with `replace(a, sel_weight_index)` applied, at each routed hook, to the tokens routed there."""

    def hook_for(j):
        def fn(act, hook):  # noqa: ARG001
            sel = (layer == j) & mask
            out = act.clone()
            out[sel] = replace(act[sel], sel)
            return out

        return fn

    return model.run_with_hooks(tokens, fwd_hooks=[(h, hook_for(j)) for j, h in enumerate(HOOKS)])


def _routed_logits(model, site, sae, tokens, mask, override=None):
    site = replace(site, override=override)
    out = routed_batch(model, site, lambda y, m, layer: encode_decode(sae, y), sae, tokens, mask)
    unembed = readout(model).unembed
    return out, unembed(out.clean), unembed(out.spliced), unembed(out.zero)


@pytest.mark.parametrize("mode", ["official", "rescaled"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_perfect_shared_sae_leaves_the_logits_unchanged_for_any_router(builtin_model, tokens, tmp_path, mode, seed):
    router = torch.randn(2, D, generator=torch.Generator().manual_seed(seed)) * 3
    loaded = _load(tmp_path, _state(router), route=f"splice={mode}")
    site = resolve_site(loaded.route, builtin_model, D)
    mask = special_token_mask(tokens, builtin_model.tokenizer, False)
    _, clean, spliced, _ = _routed_logits(builtin_model, site, loaded.sae, tokens, mask)
    torch.testing.assert_close(spliced, clean, atol=2e-4, rtol=1e-5)  # LN's eps leaves a residue of about eps/σ
    output, routing = score_routed(builtin_model, site, loaded.sae, [tokens])
    assert output.metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert output.metrics["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-5)
    assert output.metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert routing["norm_mse"] == pytest.approx(0.0, abs=1e-10)
    assert routing["splice_explained_variance"] == pytest.approx(1.0, abs=1e-6)


def test_a_half_scale_sae_with_mixed_routes_equals_a_hook_by_hook_reference(builtin_model, tokens, tmp_path):
    router = _mixed_router()
    model, mask = builtin_model, special_token_mask(tokens, builtin_model.tokenizer, False)
    layer, _ = _reference_routes(model, tokens, router)
    assert 0 < int((layer[mask] == 1).sum()) < int(mask.sum())  # both layers are used

    def half(a, sel):  # noqa: ARG001
        mu, sd = a.mean(-1, keepdim=True), a.std(-1, keepdim=True)
        return mu + 0.5 * (a - mu) * sd / (sd + EPS)

    expected = _reference_logits(model, tokens, mask, layer, half)
    expected_zero = _reference_logits(model, tokens, mask, layer, lambda a, sel: torch.zeros_like(a))  # noqa: ARG005
    for mode in ("official", "rescaled"):  # zero biases: TopK is scale-equivariant, so the two modes agree
        loaded = _load(tmp_path, _state(router, scale=0.5), route=f"splice={mode}")
        site = resolve_site(loaded.route, model, D)
        out, _, spliced, zero = _routed_logits(model, site, loaded.sae, tokens, mask)
        assert torch.equal(out.routes.layer, layer)
        torch.testing.assert_close(spliced, expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(zero, expected_zero, atol=1e-4, rtol=1e-5)


def test_official_and_rescaled_each_equal_their_own_formula_when_they_differ(builtin_model, tokens, tmp_path):
    router, k = _mixed_router(1), 40
    g = torch.Generator().manual_seed(2)
    pre_bias, latent_bias = torch.randn(D, generator=g) * 0.3, torch.randn(2 * D, generator=g) * 0.1
    state = _state(router, scale=0.5, pre_bias=pre_bias, latent_bias=latent_bias)
    model, mask = builtin_model, special_token_mask(tokens, builtin_model.tokenizer, False)
    layer, weight = _reference_routes(model, tokens, router)

    def shared_sae(u):  # signed TopK, by hand
        pre = (u - pre_bias) @ state["sae.encoder.weight"].T + latent_bias
        top = torch.topk(pre, k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values) @ state["sae.decoder.weight"].T + pre_bias

    def formula(mode):
        def replace(a, sel):
            mu, sd = a.mean(-1, keepdim=True), a.std(-1, keepdim=True)
            normed = (a - mu) / (sd + EPS)
            p = weight[sel][:, None]
            out = shared_sae(normed) if mode == "official" else shared_sae(p * normed) / p
            return out * sd + mu

        return replace

    results = {}
    for mode in ("official", "rescaled"):
        loaded = _load(tmp_path, state, k=k, route=f"splice={mode}")
        site = resolve_site(loaded.route, model, D)
        _, _, spliced, _ = _routed_logits(model, site, loaded.sae, tokens, mask)
        torch.testing.assert_close(
            spliced, _reference_logits(model, tokens, mask, layer, formula(mode)), atol=1e-4, rtol=1e-5
        )
        results[mode] = spliced
    assert (results["official"] - results["rescaled"]).abs().max() > 1e-2


@pytest.mark.parametrize("j", [0, 1])
def test_routing_every_token_to_one_layer_equals_the_single_hook_evaluation(builtin_model, tokens, tmp_path, j):
    router = _mixed_router()
    g = torch.Generator().manual_seed(3)
    state = _state(
        router, scale=0.5, pre_bias=torch.randn(D, generator=g) * 0.3, latent_bias=torch.randn(2 * D, generator=g) * 0.1
    )
    loaded = _load(tmp_path, state, k=40, route="splice=official,eps=1e-5")  # SAELens' layer_norm eps
    site = resolve_site(loaded.route, builtin_model, D)

    def to_j(routes, normalised):
        return with_routes(routes, normalised, torch.full_like(routes.layer, j))

    routed, routing = score_routed(builtin_model, site, loaded.sae, [tokens], override=to_j)
    assert [layer["route_share"] for layer in routing["layers"]][j] == 1.0
    assert routing["layers"][1 - j]["dead_latents"] == 2 * D  # no token reached the other layer
    counts = routed.details["routing_latent_layer_counts"]  # (d_sae, L): k = 40 firings per scored token
    assert counts.shape == (2 * D, 2) and float(counts[:, j].sum()) == 40 * routed.tokens_scored
    config = {"d_in": D, "d_sae": 2 * D, "k": 40, "apply_b_dec_to_input": True, "normalize_activations": "layer_norm"}
    single = build_sae(SIGNED_TOPK, config, dict(loaded.sae.state_dict()), device="cpu", dtype="float32",
                       metadata={"hook_name": HOOKS[j]}, source="test")  # fmt: skip
    (alone,) = score_batches(builtin_model, [(splice_site(HOOKS[j]), single)], [tokens])
    for key in ("ce_loss_clean", "ce_loss_with_sae", "kl_div_with_sae", "delta_ce"):
        assert routed.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-5, abs=1e-7), key


def test_soft_routing_scores_reconstruction_on_the_weighted_input_and_no_downstream(builtin_model, tokens, tmp_path):
    router = _mixed_router()
    loaded = _load(tmp_path, _state(router, scale=0.5), route="routing=soft")
    site = resolve_site(loaded.route, builtin_model, D)
    plan = SimpleNamespace(model=builtin_model, route=site, sae=loaded.sae)
    config = SimpleNamespace(include_special_tokens=False, device="cpu", examples=0)
    notes, not_measured = [], {}
    output = score_routed_plan(plan, [tokens], config, None, tokens[:1], notes, not_measured)
    assert output.metrics["ce_loss_with_sae"] is None and output.metrics["loss_recovered"] is None
    assert "soft routing" in not_measured["kl_div_with_sae"]
    assert output.routing["splice_mode"] is None and output.routing["loss_recovered_baseline"] is None
    assert output.routing["splice_explained_variance"] is None  # nothing was spliced
    # EV of ŷ = y/2 against y = Σ_j p_j LN(x_j), by hand
    _, cache = builtin_model.run_with_cache(tokens, names_filter=lambda name: name in HOOKS)
    normed = [(x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + EPS) for x in (cache[h] for h in HOOKS)]
    p = torch.softmax((normed[0] + normed[1]) @ router.T, dim=-1)
    y = (p[..., :1] * normed[0] + p[..., 1:] * normed[1])[special_token_mask(tokens, builtin_model.tokenizer, False)]
    y = y.double()
    expected = 1 - (0.5 * y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert output.metrics["explained_variance"] == pytest.approx(float(expected), rel=1e-6)
