"""HealthMonitor: a check scores what `saehealth.evaluate` scores on the same tokens, from any hand-written loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import saehealth
from saehealth.monitor import HealthCheck, HealthMonitor, held_out_tokens, warnings_between

HOOK = "blocks.0.hook_resid_post"


class TopKSAE(torch.nn.Module):
    """A home-grown BaseSAE-style TopK SAE."""

    def __init__(self, d_in=128, d_sae=256, k=16):
        super().__init__()
        self.k = k
        self.pre_bias = torch.nn.Parameter(torch.zeros(d_in))
        self.latent_bias = torch.nn.Parameter(torch.zeros(d_sae))
        self.encoder = torch.nn.Linear(d_in, d_sae, bias=False)
        self.decoder = torch.nn.Linear(d_sae, d_in, bias=False)
        self.decoder.weight.data = self.encoder.weight.data.T.clone()

    def encode(self, x):
        pre = F.relu(self.encoder(x - self.pre_bias) + self.latent_bias)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, index, values)

    def decode(self, z):
        return self.decoder(z) + self.pre_bias


def test_a_check_equals_a_fresh_evaluation_on_the_same_tokens(builtin_model):
    torch.manual_seed(0)
    sae = TopKSAE()
    monitor = HealthMonitor(builtin_model, HOOK, held_out_tokens(builtin_model, 1024))
    check = monitor.check(sae, step=0, tokens_seen=0)
    result = saehealth.evaluate(sae=sae, model=builtin_model, hook=HOOK, n_tokens=1024, skip=("absorption",))
    for key, value in check.metrics.items():
        assert value == pytest.approx(result.metrics[key], abs=1e-9), key
    assert sae.training  # put back in training mode


def test_hand_written_training_loop_calls_the_monitor(builtin_model):
    """The 20-line loop of docs/training.md ("During training")."""
    torch.manual_seed(0)
    model, sae = builtin_model, TopKSAE()
    monitor = saehealth.HealthMonitor(model, HOOK, held_out_tokens(model, 512))
    train = held_out_tokens(model, 4096, split="train")
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    tokens_seen = 0
    for step, batch in enumerate(train.split(4)):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=[HOOK])
        x = cache[HOOK].reshape(-1, 128)
        loss = (sae.decode(sae.encode(x)) - x).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tokens_seen += batch.numel()
        if step % 4 == 3:
            check = monitor.check(sae, step=step, tokens_seen=tokens_seen)
            print(step, check.metrics["loss_recovered"], check.warnings)

    steps = [check.tokens_seen for check in monitor.history]
    assert len(steps) == 2 and steps == sorted(steps)
    first, last = monitor.history[0].metrics, monitor.history[-1].metrics
    assert last["explained_variance"] > first["explained_variance"]  # training helps, and the monitor sees it


def _check(loss_recovered, dead, l0, previous=None):
    from saehealth.verdicts import assess

    metrics = {"loss_recovered": loss_recovered, "dead_fraction": dead, "l0": l0}
    return HealthCheck(None, None, metrics, assess(metrics, {}, None, d_sae=1000))


def test_warnings_on_the_way_down():
    good = _check(0.95, 0.0, 50.0)
    assert warnings_between(None, good) == []
    worse = _check(0.90, 0.6, 5000.0)
    found = " | ".join(warnings_between(good, worse))
    assert "dead fraction" in found and "L0" in found and "loss recovered fell from 0.950 to 0.900" in found
    assert warnings_between(worse, worse) == []  # said once, not at every check
