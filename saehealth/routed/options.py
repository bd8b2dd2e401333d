"""The `--route` option: routed-SAE settings a checkpoint does not record, as `key=value` pairs.

`--route "k=64,aggregation=sum,routing=hard,splice=rescaled,eps=1e-6,config=run.yaml"`. Every key is optional;
what is given overrides the file name or the YAML (a note says so). Hooks are given with `--hook`
(comma-separated, in depth order).
"""

from __future__ import annotations

from saehealth.errors import ConfigError, suggest
from saehealth.routed.spec import AGGREGATIONS, ROUTINGS, SPLICE_MODES

ROUTE_KEYS = ("k", "aggregation", "routing", "splice", "eps", "config")
_ALIASES = {"aggre": "aggregation", "agg": "aggregation", "splice_mode": "splice", "yaml": "config"}


def parse_route_options(text: str | None) -> dict[str, object]:
    """`k=64,aggregation=sum,...` as a dict with typed values; ConfigError naming the bad pair."""
    options: dict[str, object] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        key, value = _ALIASES.get(key.strip(), key.strip()), value.strip()
        if not sep or not value:
            raise ConfigError(f"--route {pair.strip()!r} is not key=value: e.g. --route k=64,routing=hard.")
        if key not in ROUTE_KEYS:
            raise ConfigError(f"--route key {key!r} is unknown: use {', '.join(ROUTE_KEYS)}.{suggest(key, ROUTE_KEYS)}")
        options[key] = _typed(key, value)
    return options


def _typed(key: str, value: str) -> object:
    choices = {"aggregation": AGGREGATIONS, "routing": ROUTINGS, "splice": SPLICE_MODES}
    if key in choices:
        if value not in choices[key]:
            raise ConfigError(f"--route {key}={value} is not one of {', '.join(choices[key])}.")
        return value
    if key == "k":
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--route k={value} must be a whole number above 0.")
        return int(value)
    if key == "eps":
        if value == "none":
            return None
        try:
            eps = float(value)
        except ValueError:
            raise ConfigError(f"--route eps={value} must be a number (or none: no normalisation).") from None
        if not eps >= 0:
            raise ConfigError(f"--route eps={value} must be 0 or more.")
        return eps
    return value  # config: a path, checked by the loader
