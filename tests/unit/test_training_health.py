"""The --health-* options of `saehealth train`, and what a check logs."""

from __future__ import annotations

import sys
import types

import pytest

from saehealth.errors import ConfigError
from saehealth.monitor import HealthCheck
from saehealth.training.health import HealthOptions, TrainingHealth, pop_health_args


def test_health_options_are_taken_out_of_the_training_overrides():
    args = ["demo", "--k", "8", "--health-every", "1000", "--health-tokens=512", "--lr", "1e-3"]
    rest, options = pop_health_args(args)
    assert rest == ["demo", "--k", "8", "--lr", "1e-3"]
    assert options == HealthOptions(every=1000, tokens=512)
    assert pop_health_args(["demo", "--k", "8"]) == (["demo", "--k", "8"], None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--health-tokens", "512"], "go with --health-every"),
        (["--health-every", "0"], "--health-every must be a whole number above 0"),
        (["--health-every", "1e3x"], "--health-every must be"),
        (["--health-every"], "needs a value"),
    ],
)
def test_bad_health_options_are_one_line_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        pop_health_args(["demo", *args])


def test_each_check_is_printed_and_logged_to_wandb_at_its_training_step(monkeypatch):
    logged, said = [], []
    fake = types.SimpleNamespace(run=object(), log=lambda values, step=None: logged.append((values, step)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    health = object.__new__(TrainingHealth)
    health.say = said.append
    metrics = {"loss_recovered": 0.9, "l0": 50.0, "dead_fraction": 0.01, "explained_variance": 0.8}
    health._log(HealthCheck(12, 4096, metrics, {}, ["L0 left its band"]))
    assert said[0] == "health @ 4,096 tokens: loss_recovered 0.9, explained_variance 0.8, l0 50, dead_fraction 0.01"
    assert "L0 left its band" in said[1]
    values, step = logged[0]
    assert step == 12 and values["health/loss_recovered"] == 0.9 and values["health/tokens_seen"] == 4096
