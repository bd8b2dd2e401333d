"""The routing maths and the routing statistics against closed forms on hand-set inputs (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from saehealth.routed.router import Routes, normalise, route, with_routes
from saehealth.routed.stats import RoutingTally, near_uniform
from saehealth.verdicts import routing_verdicts

# 1 sequence of 5 tokens, L = 3 layers, d = 4, hand-set so that no two router logits tie.
X = torch.tensor(
    [
        [[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]],
        [[0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1.0]],
        [[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0]],
        [[0, 0, 0, 1.0], [0, 0, 0, 2.0], [1.0, 0, 0, 0]],
    ]
)[None]  # (1, 5, 3, 4)
W = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]])


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_route_matches_the_closed_form(aggregation, routing):
    routes = route(X, W, aggregation, routing)
    v = X.sum(2) if aggregation == "sum" else X.sum(2) / 3
    logits = v @ W.T
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    torch.testing.assert_close(routes.probs, p)
    layer = logits.argmax(-1)  # the same for sum and mean: softmax(α/L) keeps the order
    assert routes.layer.tolist() == [[2, 0, 0, 2, 2]] and torch.equal(routes.layer, layer)
    torch.testing.assert_close(routes.weight, p.max(-1).values)
    if routing == "hard":
        expected = torch.stack([X[0, t, layer[0, t]] * p[0, t].max() for t in range(5)])[None]
    else:
        expected = (X * p[..., None]).sum(2)
    torch.testing.assert_close(routes.y, expected)
    top2 = logits.topk(2, -1).values
    torch.testing.assert_close(routes.margin, top2[..., 0] - top2[..., 1])


def test_mean_aggregation_changes_the_probability_not_the_route():
    hard_sum, hard_mean = route(X, W, "sum", "hard"), route(X, W, "mean", "hard")
    assert torch.equal(hard_sum.layer, hard_mean.layer)
    assert not torch.allclose(hard_sum.weight, hard_mean.weight)


def test_zero_router_is_uniform_with_entropy_log_l():
    routes = route(X, torch.zeros(3, 4), "sum", "soft")
    torch.testing.assert_close(routes.probs, torch.full((1, 5, 3), 1 / 3))
    tally = RoutingTally(3, 4)
    tally.update(routes, routes.y, routes.y, torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5))
    stats = tally.result(["a", "b", "c"])
    assert stats["router_entropy"] == pytest.approx(1.0) and stats["effective_layers"] == pytest.approx(3.0)
    assert stats["near_tie_share"] == 1.0 and stats["low_confidence_share"] == 1.0  # 1/3 < 2/(3+1)


def test_normalise_is_the_authors_per_token_layer_norm():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    out, mean, std = normalise(x, 1e-6)
    torch.testing.assert_close(out, (x - 3.0) / (x.std(unbiased=True) + 1e-6))
    assert normalise(x, None)[0] is x


def test_injected_routes_give_exact_shares_and_per_layer_sums_add_up():
    """7 tokens to layer 0 and 3 to layer 1 (plus 2 masked ones, which do not count)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 2, 4, generator=g)
    base = route(x, torch.randn(2, 4, generator=g), "sum", "hard")
    layer = torch.tensor([[0] * 7 + [1] * 3 + [1, 0]])
    routes = with_routes(base, x, layer)
    mask = torch.tensor([[True] * 10 + [False] * 2])
    y_hat = routes.y * 0.5 + 0.1
    tally = RoutingTally(2, 4)
    tally.update(routes, routes.y, y_hat, mask, torch.full((1, 12), 3.0))
    other = RoutingTally(2, 4)  # merging an empty tally changes nothing
    tally.merge(other)
    stats = tally.result(["h0", "h1"])
    assert [layer["route_share"] for layer in stats["layers"]] == [0.7, 0.3]
    assert [layer["tokens"] for layer in stats["layers"]] == [7, 3]
    assert stats["tokens"] == 10 and stats["layers"][0]["l0"] == 3.0
    sse = (y_hat - routes.y)[0, :10].double().pow(2).sum()
    assert float(tally.sse.sum()) == pytest.approx(float(sse))  # the per-layer groups add up to the pooled SSE
    err = (y_hat - routes.y)[0, :10].double().pow(2).mean(-1) / routes.y[0, :10].double().pow(2).mean(-1)
    assert stats["norm_mse"] == pytest.approx(float(err.mean()))
    torch.testing.assert_close(
        torch.tensor(stats["layers"][0]["mean_confidence"]), routes.weight[0, :7].double().mean().float()
    )


def test_unused_layers_and_collapse_are_verdicts():
    routing = {"layers": [{}, {}, {}, {}], "unused_layers": ["a", "b"], "max_route_share": 0.95}
    verdicts = routing_verdicts(routing)
    assert verdicts["routing_unused_layers"]["status"] == "unhealthy"
    assert verdicts["routing_collapse"]["status"] == "unhealthy"
    routing = {"layers": [{}, {}, {}, {}], "unused_layers": [], "max_route_share": 0.4}
    assert {v["status"] for v in routing_verdicts(routing).values()} == {"healthy"}
    assert near_uniform(2) == pytest.approx(2 / 3) and 1 / 9 < near_uniform(9) < 1


def test_routes_dataclass_single_layer_margin_is_infinite():
    routes = route(X[:, :, :1], W[:1], "sum", "hard")
    assert isinstance(routes, Routes) and math.isinf(float(routes.margin[0, 0]))
    torch.testing.assert_close(routes.weight, torch.ones(1, 5))


def test_argmax_ties_go_to_the_first_layer_on_cpu():
    """torch's tie rule (the design note left it unverified): a zero router routes every token to layer 0."""
    routes = route(X, torch.zeros(3, 4), "sum", "hard")
    assert routes.layer.tolist() == [[0] * 5]


def test_hugging_face_hidden_state_indices_are_what_the_hook_mapping_assumes():
    """hidden_states[0] is the embeddings, [h] the output of decoder layer h−1 for 1 ≤ h ≤ n−1, and [n] the last
    layer's output after the final norm (so `hook_of_layer` refuses h = n); checked on a tiny random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    seen = {}

    def keep(name):
        return lambda module, inputs, output: seen.__setitem__(name, output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(model.model.layers)]
    handles += [model.model.embed_tokens.register_forward_hook(keep("embed"))]
    handles += [model.model.norm.register_forward_hook(keep("norm"))]
    with torch.no_grad():
        hidden = model(torch.randint(0, 50, (1, 7)), output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    assert len(hidden) == 4 and torch.equal(hidden[0], seen["embed"])
    assert torch.equal(hidden[1], seen[0]) and torch.equal(hidden[2], seen[1])
    assert torch.equal(hidden[3], seen["norm"]) and not torch.equal(hidden[3], seen[2])
