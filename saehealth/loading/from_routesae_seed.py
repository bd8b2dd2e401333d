"""RouteSAE / RouteMatryoshkaSAE checkpoints of `zach-perlman/SAEs` (seed 002): a `.pt` state dict plus its YAML.

The state dict holds `router.router.weight` (L, d) and a shared SAE under `sae.` of the YAML's `base_sae_type`
(bfloat16 on disk):

| base type    | keys under `sae.`                                                         | SAELens class |
| ------------ | ------------------------------------------------------------------------- | ------------- |
| TopKSAE      | pre_bias, latent_bias, encoder.weight (M, d), decoder.weight (d, M)       | topk          |
| VanillaSAE   | the same                                                                  | standard      |
| GatedSAE     | pre_bias, gate_bias, mag_bias, r_mag, encoder.weight, decoder.weight      | gated         |
| JumpReLUSAE  | TopK's keys and threshold (M)                                             | jumprelu      |
| MatryoshkaSAE| W_enc (d, M), b_enc, W_dec (M, d), b_dec, group_sizes (int64), threshold () | jumprelu or topk |

The checkpoint holds no config: the YAML (`--route config=FILE`, else `config.yaml` or the one `*.yaml` beside
the file) gives, in its `model:` section, `type`, `base_sae_type`, `n_layers`, `start_layer`/`end_layer` (Hugging
Face hidden-state indices, default n//5 and n*4//5+1), `k`, `group_sizes`, `aggre`, `routing` and
`language_model_path`. Activations are not normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import load_torch_file, orient, peek_torch_file, require_tensors, vector
from saehealth.loading.from_routesae import pick
from saehealth.routed.options import parse_route_options
from saehealth.routed.spec import RouteSpec, hook_of_layer, parse_hooks

ROUTER_KEY = "router.router.weight"
ROUTED_TYPES = ("RouteSAE", "RouteMatryoshkaSAE")
BASE_TYPES = ("TopKSAE", "VanillaSAE", "GatedSAE", "JumpReLUSAE", "MatryoshkaSAE")


def is_seed_route_state(state: object) -> bool:
    return isinstance(state, dict) and isinstance(state.get(ROUTER_KEY), torch.Tensor)


def find_yaml(path: Path, given: str | None) -> Path:
    """The run's YAML: `--route config=FILE`, else `config.yaml` or the only `*.yaml` beside the checkpoint."""
    if given:
        found = Path(given).expanduser()
        if not found.is_file():
            raise CheckpointError(f"--route config={given}: no such file.")
        return found
    if (path.parent / "config.yaml").is_file():
        return path.parent / "config.yaml"
    beside = sorted(path.parent.glob("*.yaml")) + sorted(path.parent.glob("*.yml"))
    if len(beside) == 1:
        return beside[0]
    raise CheckpointError(
        f"{path} holds no config and {'several' if beside else 'no'} YAML file(s) sit beside it: pass the run's "
        "YAML with --route config=FILE (its model: section gives the type, layers, k and routing)."
    )


def read_model_section(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} is not readable YAML ({str(exc).splitlines()[0]}): fix or replace it.") from None
    section = data.get("model") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise CheckpointError(f"{path} has no model: section: pass the YAML of the run that trained the checkpoint.")
    return section


def _k(model: dict, path: Path) -> int:
    if model.get("k") is None:
        raise CheckpointError(f"{path}: the YAML gives no k for its TopK SAE: pass --route k=K.")
    return int(model["k"])


def _shared_sae(state: dict, base: str, model: dict, d_in: int, d_sae: int, notes: list[str], path: Path):
    """(SAELens architecture, config fields, tensors, training facts) of the shared SAE."""
    sae = {key[4:]: value for key, value in state.items() if key.startswith("sae.")}
    config: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True}
    facts: dict[str, Any] = {}
    if base == "MatryoshkaSAE":
        require_tensors(sae, ("W_enc", "b_enc", "W_dec", "b_dec", "group_sizes"), f"{path} (sae.)")
        tensors = {
            "W_enc": orient(sae["W_enc"], d_in, d_sae, "sae.W_enc", notes, "(d, M)"),
            "b_enc": vector(sae["b_enc"], d_sae, "sae.b_enc"),
            "W_dec": orient(sae["W_dec"], d_sae, d_in, "sae.W_dec", notes, "(M, d)"),
            "b_dec": vector(sae["b_dec"], d_in, "sae.b_dec"),
        }
        groups = [int(g) for g in sae["group_sizes"].reshape(-1)]
        if sum(groups) != d_sae or min(groups) <= 0:
            raise CheckpointError(
                f"{path}: sae.group_sizes {groups} sum to {sum(groups)}, not the {d_sae} latents: the checkpoint is damaged."
            )
        if model.get("group_sizes") is not None and [int(g) for g in model["group_sizes"]] != groups:
            notes.append(f"group sizes {groups} from the weights (the YAML says {model['group_sizes']})")
        facts["group_sizes"] = groups
        threshold = sae.get("threshold")
        if isinstance(threshold, torch.Tensor) and float(threshold) >= 0:
            tensors["threshold"] = vector(threshold.float(), d_sae, "sae.threshold")
            notes.append(
                f"Matryoshka encoded with its learned threshold {float(threshold):.4g} (encode(use_threshold=True)); "
                "training used BatchTopK"
            )
            return "jumprelu", config, tensors, facts
        config["k"] = _k(model, path)
        notes.append(
            "Matryoshka encoded with per-token TopK after ReLU (exact for the initial commit; its threshold is "
            "unset, so this approximates HEAD's BatchTopK)"
        )
        return "topk", config, tensors, facts
    require_tensors(sae, ("pre_bias", "encoder.weight", "decoder.weight"), f"{path} (sae.)")
    tensors = {
        "W_enc": orient(sae["encoder.weight"], d_in, d_sae, "sae.encoder.weight", notes, "(M, d)"),
        "W_dec": orient(sae["decoder.weight"], d_sae, d_in, "sae.decoder.weight", notes, "(d, M)"),
        "b_dec": vector(sae["pre_bias"], d_in, "sae.pre_bias"),
    }
    if base == "GatedSAE":
        require_tensors(sae, ("gate_bias", "mag_bias", "r_mag"), f"{path} (sae.)")
        tensors.update(
            b_gate=vector(sae["gate_bias"], d_sae, "sae.gate_bias"),
            b_mag=vector(sae["mag_bias"], d_sae, "sae.mag_bias"),
            r_mag=vector(sae["r_mag"], d_sae, "sae.r_mag"),
        )
        return "gated", config, tensors, facts
    require_tensors(sae, ("latent_bias",), f"{path} (sae.)")
    tensors["b_enc"] = vector(sae["latent_bias"], d_sae, "sae.latent_bias")
    if base == "JumpReLUSAE":
        require_tensors(sae, ("threshold",), f"{path} (sae.)")
        threshold = vector(sae["threshold"], d_sae, "sae.threshold")
        if bool((threshold < 0).any()):
            raise IncompatibleSAEError(
                f"{path}: sae.threshold has negative values, which SAELens' JumpReLU cannot hold."
            )
        tensors["threshold"] = threshold
        return "jumprelu", config, tensors, facts
    if base == "TopKSAE":
        config["k"] = _k(model, path)
        return "topk", config, tensors, facts
    return "standard", config, tensors, facts


@register_adapter
class SeedRouteAdapter(Adapter):
    """A RouteSAE / RouteMatryoshkaSAE of zach-perlman/SAEs (seed 002), with its YAML."""

    name = "routesae_seed"
    source_library = "zach-perlman/SAEs"
    expected = "zach-perlman/SAEs RouteSAE (a .pt with router.router.weight, and its YAML)"
    priority = 64

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix in (".pt", ".pth") and is_seed_route_state(peek_torch_file(path))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file: a zach-perlman/SAEs checkpoint is one .pt state dict.")
        state = load_torch_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
        require_tensors(state, (ROUTER_KEY,), path)
        options, notes, sources = parse_route_options(request.route), [], {}
        yaml_path = find_yaml(path, options.get("config"))
        model = read_model_section(yaml_path)
        kind, base = model.get("type"), model.get("base_sae_type", "TopKSAE")
        if kind not in ROUTED_TYPES:
            raise CheckpointError(f"{yaml_path}: model.type is {kind!r}, not a routed SAE ({', '.join(ROUTED_TYPES)}).")
        base = "MatryoshkaSAE" if kind == "RouteMatryoshkaSAE" else base
        if base not in BASE_TYPES:
            raise CheckpointError(f"{yaml_path}: base_sae_type {base!r} is not one of {', '.join(BASE_TYPES)}.")
        router = state[ROUTER_KEY]
        d_in = int(router.shape[-1])
        d_sae = int(model.get("latent_size") or 0)
        if d_sae <= 0:
            raise CheckpointError(f"{yaml_path}: model.latent_size is missing: the YAML is not this run's.")
        where = f"YAML ({yaml_path.name})"
        recorded = {"aggregation": model.get("aggre", "sum"), "routing": model.get("routing", "hard")}
        if model.get("k") is not None:
            recorded["k"] = int(model["k"])
        k = pick("k", options, recorded, where, sources, notes)
        model = {**model, "k": k}
        aggregation = pick("aggregation", options, recorded, where, sources, notes)
        routing = pick("routing", options, recorded, where, sources, notes)
        eps = pick("eps", options, {"eps": None}, "layout (the seed trains on raw activations)", sources, notes)
        splice = pick("splice", options, {}, where, sources, notes, default="rescaled")
        hooks, layers = parse_hooks(request.hook or request.routed_hooks), None
        if hooks is not None:
            sources["layers"] = "option (--hook)"
        else:
            n_layers = model.get("n_layers")
            start = model.get("start_layer", None if n_layers is None else int(n_layers) // 5)
            end = model.get("end_layer", None if n_layers is None else int(n_layers) * 4 // 5 + 1)
            if start is None or end is None:
                raise CheckpointError(f"{yaml_path}: neither start_layer/end_layer nor n_layers: pass --hook.")
            layers = list(range(int(start), int(end)))
            sources["layers"] = where if "start_layer" in model else f"default of the seed (n//5 … 4n//5 of {n_layers})"
            for h in layers:  # refuse h = n (post-norm) when n is known; n unknown: the model decides later
                hook_of_layer(h, None if n_layers is None else int(n_layers))
        wanted = len(hooks) if hooks is not None else len(layers)
        if router.ndim != 2 or router.shape[0] != wanted:
            raise CheckpointError(
                f"{path}: the router has {tuple(router.shape)[0]} rows but the routed layers are {wanted} "
                f"({sources['layers']}): the YAML is not this checkpoint's, or pass --hook."
            )
        architecture, config, tensors, facts = _shared_sae(state, base, model, d_in, d_sae, notes, path)
        if "k" in config and not 1 <= int(config["k"]) <= d_sae:
            raise CheckpointError(f"{yaml_path}: k = {config['k']} must be from 1 to the {d_sae} latents.")
        model_name = model.get("language_model_path")
        sae = build_sae(
            architecture, config, tensors, device=request.device, dtype=request.dtype,
            metadata={"hook_name": request.hook or request.routed_hooks, "model_name": model_name}, source=path,
        )  # fmt: skip
        spec = RouteSpec(
            router.float(), aggregation, routing, eps, splice, "seed", layers=layers, hooks=hooks, sources=sources
        )
        notes.append(f"settings read from {yaml_path}; routed layers not normalised (the seed trains on raw ones)")
        training = {"type": kind, "base_sae_type": base, "k": k, "aggregation": aggregation, "routing": routing}
        training.update(facts, routed_layers=int(router.shape[0]))
        return LoadedSAE(
            sae=sae, source_library=self.source_library, format=self.name, architecture=f"route_{architecture}",
            hook_name=request.hook or request.routed_hooks, model_name=model_name, training=training, notes=notes, path=str(path), route=spec,
        )  # fmt: skip
