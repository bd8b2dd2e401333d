"""What a routed checkpoint says about its router, and which TransformerLens hooks its layers are.

Layers are Hugging Face hidden-state indices h (`outputs.hidden_states[h]`): h = 0 is the embeddings, which
TransformerLens holds at `blocks.0.hook_resid_pre`; 1 ≤ h ≤ n−1 is the output of decoder layer h−1, i.e.
`blocks.{h-1}.hook_resid_post`; h = n is the last layer's output after the final norm, which no residual hook
holds, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saehealth.errors import CheckpointError, ConfigError

AGGREGATIONS = ("sum", "mean")
ROUTINGS = ("hard", "soft")
SPLICE_MODES = ("official", "rescaled")
# The authors' per-token normalisation epsilon (src/utils.py pre_process); OpenAI and SAELens use 1e-5.
ROUTESAES_EPS = 1e-6


@dataclass
class RouteSpec:
    """The router of a routed SAE and where each of its settings came from.

    `router` is W_router (L, d): logits = W_router v for v the sum (or mean) of the routed layers' inputs.
    `normalize_eps` is the epsilon of the per-token, per-layer normalisation (x − mean)/(std + eps) the router and
    the SAE see (None: raw activations, as the seed layout trains). `layers` are the Hugging Face hidden-state
    indices routed (None: the authors' n//4 … 3n//4 of the model, decided once the model is known); `hooks`
    the TransformerLens hooks when given explicitly. `sources` says, per setting, where it was read
    (file name, YAML, option, default).
    """

    router: torch.Tensor
    aggregation: str
    routing: str
    normalize_eps: float | None
    splice_mode: str
    layout: str  # "routesaes" (swei2001/RouteSAEs) or "seed" (zach-perlman/SAEs)
    layers: list[int] | None = None
    hooks: list[str] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def n_routes(self) -> int:
        return int(self.router.shape[0])


def hook_of_layer(index: int, n_layers: int | None = None) -> str:
    """The TransformerLens residual hook holding Hugging Face hidden state `index` (of a model of `n_layers`)."""
    if index < 0:
        raise CheckpointError(f"Routed layer {index} is negative: hidden-state indices start at 0 (the embeddings).")
    if n_layers is not None and index >= n_layers:
        raise CheckpointError(
            f"Routed layer {index} is the model's last hidden state (after the final norm) or beyond, which no "
            f"residual hook of a {n_layers}-layer model holds: pass the routed hooks with --hook."
        )
    return "blocks.0.hook_resid_pre" if index == 0 else f"blocks.{index - 1}.hook_resid_post"


def official_layers(n_layers: int) -> list[int]:
    """The authors' routed hidden-state indices: n//4 … 3n//4 (src/utils.py, `start_layer`/`end_layer`)."""
    return list(range(n_layers // 4, n_layers * 3 // 4 + 1))


def parse_hooks(text: str | None) -> list[str] | None:
    """An explicit `--hook` list: comma-separated TransformerLens hooks, in depth order."""
    if not text:
        return None
    hooks = [part.strip() for part in text.split(",") if part.strip()]
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"--hook {text!r} names a hook twice: give each routed layer once, in depth order.")
    return hooks


def routed_hooks(spec: RouteSpec, n_layers: int) -> list[str]:
    """The routed hooks on a model of `n_layers` blocks, checked against the router's row count."""
    if spec.hooks is not None:
        hooks, how = spec.hooks, "--hook lists"
    elif spec.layers is not None:
        hooks, how = [hook_of_layer(h, n_layers) for h in spec.layers], "the config routes"
    else:
        layers = official_layers(n_layers)
        if len(layers) != spec.n_routes:
            raise CheckpointError(
                f"The router has {spec.n_routes} rows but the authors' layers n//4…3n//4 of this {n_layers}-layer "
                f"model are {len(layers)}: pass the routed hooks with --hook (comma-separated, in depth order)."
            )
        spec.sources.setdefault("layers", f"default (the authors' n//4…3n//4 of {n_layers} layers)")
        hooks, how = [hook_of_layer(h, n_layers) for h in layers], "the layers"
    if len(hooks) != spec.n_routes:
        raise CheckpointError(
            f"The router has {spec.n_routes} rows but {how} {len(hooks)} layers: give one hook per router row."
        )
    return list(hooks)


def describe_route(spec: RouteSpec) -> list[tuple[str, str]]:
    """`saehealth inspect` rows: the router, the layers and their hooks, and where each setting came from."""
    norms = spec.router.float().norm(dim=-1)
    rows = [
        (
            "router",
            f"{spec.n_routes} layers x {spec.router.shape[1]} (row norms {norms.min():.3g} to {norms.max():.3g})",
        ),
        ("layout", spec.layout),
    ]
    if spec.hooks is not None:
        layers = ", ".join(spec.hooks)
    elif spec.layers is not None:
        layers = ", ".join(f"h{h} = {hook_of_layer(h)}" for h in spec.layers)
    else:
        layers = "Hugging Face hidden states n//4 … 3n//4 of the model (decided when the model is loaded)"
    rows.append(("routed layers", layers))
    eps = (
        "none (raw activations)"
        if spec.normalize_eps is None
        else f"per token, (x - mean)/(std + {spec.normalize_eps:g})"
    )
    settings = {
        "aggregation": spec.aggregation,
        "routing": spec.routing,
        "normalisation": eps,
        "splice mode": spec.splice_mode,
    }
    keys = {"aggregation": "aggregation", "routing": "routing", "normalisation": "eps", "splice mode": "splice"}
    for name, value in settings.items():
        rows.append((name, f"{value}, from {spec.sources.get(keys[name], 'default')}"))
    rows.append(("layers from", spec.sources.get("layers", "default (decided by the model)")))
    return rows


def split_hook_option(hook: str | None) -> tuple[str | None, str | None]:
    """`--hook` of a comparison as (the single-hook SAEs' hook, the routed SAEs' hooks): a comma-separated list
    names routed hooks, which no single-hook SAE has, so those keep their own; one hook is every SAE's."""
    if hook and "," in hook:
        return None, hook
    return hook, None


def check_not_routed(named) -> None:
    """ConfigError naming the first routed SAE among (name, loaded SAE) pairs: `--replace-all` splices one SAE
    per hook, and a routed SAE writes a different hook per token."""
    for name, loaded in named:
        if getattr(loaded, "route", None) is not None:
            raise ConfigError(
                f"--replace-all splices every SAE in at once at its own hook, but {name} is a routed SAE, which "
                "writes a different layer per token: drop it or --replace-all."
            )
