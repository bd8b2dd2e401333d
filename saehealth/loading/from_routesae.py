"""RouteSAE checkpoints of the authors' code (`swei2001/RouteSAEs`): one `.pt` state dict, no config file.

Keys: `router.weight` (L, d), `sae.pre_bias` (d), `sae.latent_bias` (M), `sae.encoder.weight` (M, d),
`sae.decoder.weight` (d, M), float32. k, the router's aggregation and the routing are only in the file name
`{sum|mean}_{hard|soft}_K{k}_{model label}_{data}_{M}.pt` (or `--route`); the routed layers are the model's
hidden states n//4 … 3n//4 (or `--hook`). Every routed layer is normalised per token, (x − mean)/(std + 1e-6),
before the router and the SAE see it; the shared SAE is a TopK that keeps negative values (`signed_topk.py`).

The authors' single-layer baselines (`L{layer}_K{k}_….pt`, bare `pre_bias`, `latent_bias`, `encoder.weight`,
`decoder.weight` without OpenAI's `activation` entry) are refused by name here and by the OpenAI adapter: they
are a signed TopK with a 1e-6 normalisation, not an OpenAI ReLU autoencoder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import load_torch_file, orient, peek_torch_file, require_tensors, vector
from saehealth.loading.signed_topk import SIGNED_TOPK
from saehealth.routed.options import parse_route_options
from saehealth.routed.spec import ROUTESAES_EPS, RouteSpec, parse_hooks

ROUTER_KEY = "router.weight"
SAE_KEYS = ("sae.pre_bias", "sae.latent_bias", "sae.encoder.weight", "sae.decoder.weight")
FILE_NAME = re.compile(r"^(sum|mean)_(hard|soft)_K(\d+)_(.+)_(\d+)\.pt$")


def is_routesaes_state(state: object) -> bool:
    """The authors' RouteSAE state dict: `router.weight` and the `sae.` TopK keys."""
    return isinstance(state, dict) and all(isinstance(state.get(k), torch.Tensor) for k in (ROUTER_KEY, *SAE_KEYS))


def is_bare_single_layer(state: object) -> bool:
    """The authors' bare single-layer SAE state dict: OpenAI's three tensors without OpenAI's `activation` entry."""
    return (
        isinstance(state, dict)
        and "activation" not in state
        and all(isinstance(state.get(k), torch.Tensor) for k in ("pre_bias", "latent_bias", "encoder.weight"))
    )


def settings_from_name(name: str) -> dict[str, object]:
    """k, aggregation, routing, the model label and M from an authors' file name ({} when it does not match)."""
    match = FILE_NAME.match(name)
    if not match:
        return {}
    aggregation, routing, k, label, d_sae = match.groups()
    return {"aggregation": aggregation, "routing": routing, "k": int(k), "label": label, "d_sae": int(d_sae)}


def pick(key: str, options: dict, recorded: dict, where: str, sources: dict, notes: list[str], default=None):
    """A setting from `--route` (over what the file records, with a note), else the file, else `default`."""
    if key in options:
        if key in recorded and recorded[key] != options[key]:
            notes.append(f"{key} {options[key]} from --route overrides {recorded[key]} in the {where}")
        sources[key] = "option (--route)"
        return options[key]
    if key in recorded:
        sources[key] = where
        return recorded[key]
    if default is not None:
        sources[key] = "default"
    return default


@register_adapter
class RouteSAEsAdapter(Adapter):
    """A RouteSAE state dict of the authors' code (swei2001/RouteSAEs)."""

    name = "routesae"
    source_library = "routesaes"
    expected = "RouteSAEs (a .pt state dict with router.weight and sae.pre_bias)"
    priority = 65  # before the OpenAI adapter, whose keys the shared SAE's resemble

    def detect(self, path: Path) -> bool:
        if not (path.is_file() and path.suffix in (".pt", ".pth")):
            return False
        state = peek_torch_file(path)
        return is_routesaes_state(state) or is_bare_single_layer(state)  # the latter only to refuse it clearly

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file: a RouteSAEs checkpoint is one .pt state dict.")
        state = load_torch_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
        if is_bare_single_layer(state):
            refuse_single_layer(path)
        require_tensors(state, (ROUTER_KEY, *SAE_KEYS), path)
        options, notes, sources = parse_route_options(request.route), [], {}
        d_in, d_sae = state["sae.pre_bias"].numel(), state["sae.latent_bias"].numel()
        named = settings_from_name(path.name)
        if named and named["d_sae"] != d_sae:
            raise CheckpointError(
                f"{path.name} says {named['d_sae']} latents but sae.latent_bias has {d_sae}: the file was renamed; "
                "restore its name or rename it to match."
            )
        where = "file name"
        k = pick("k", options, named, where, sources, notes)
        aggregation = pick("aggregation", options, named, where, sources, notes)
        routing = pick("routing", options, named, where, sources, notes)
        missing = [
            key for key, value in (("k", k), ("aggregation", aggregation), ("routing", routing)) if value is None
        ]
        if missing:
            raise CheckpointError(
                f"{path.name} does not say its {', '.join(missing)} (the authors' name is "
                "{sum|mean}_{hard|soft}_K{k}_..._{M}.pt): pass --route k=K,aggregation=sum|mean,routing=hard|soft."
            )
        if not 1 <= k <= d_sae:
            raise CheckpointError(f"k = {k} must be from 1 to the {d_sae} latents: fix --route k or the file name.")
        eps = pick("eps", options, {}, where, sources, notes, default=ROUTESAES_EPS)
        splice = pick("splice", options, {}, where, sources, notes, default="official")
        router = state[ROUTER_KEY]
        if router.ndim != 2 or router.shape[1] != d_in:
            raise CheckpointError(
                f"{path}: router.weight has shape {tuple(router.shape)}, expected (layers, {d_in}): the file is "
                "not a RouteSAE of this width."
            )
        hooks = parse_hooks(request.hook or request.routed_hooks)
        if hooks is not None:
            sources["layers"] = "option (--hook)"
            if len(hooks) != router.shape[0]:
                raise CheckpointError(
                    f"The router has {router.shape[0]} rows but --hook names {len(hooks)} hooks: give one per row."
                )
        spec = RouteSpec(router.float(), aggregation, routing, eps, splice, "routesaes", hooks=hooks, sources=sources)
        tensors = {
            "W_enc": orient(state["sae.encoder.weight"], d_in, d_sae, "sae.encoder.weight", notes, "(M, d)"),
            "b_enc": vector(state["sae.latent_bias"], d_sae, "sae.latent_bias"),
            "W_dec": orient(state["sae.decoder.weight"], d_sae, d_in, "sae.decoder.weight", notes, "(d, M)"),
            "b_dec": vector(state["sae.pre_bias"], d_in, "sae.pre_bias"),
        }
        config = {"d_in": d_in, "d_sae": d_sae, "k": k, "apply_b_dec_to_input": True, "normalize_activations": "none"}
        sae = build_sae(
            SIGNED_TOPK, config, tensors, device=request.device, dtype=request.dtype,
            metadata={"hook_name": request.hook or request.routed_hooks}, source=path,
        )  # fmt: skip
        notes += [
            "signed TopK (the authors' TopK keeps negative top-k values; no ReLU)",
            f"routed layers normalised per token, (x - mean)/(std + {eps}), before the router and the SAE"
            if eps is not None
            else "routed layers not normalised (--route eps=none)",
        ]
        if named:
            notes.append(f"run label {named['label']!r} in the file name names no model id: pass --model")
        training = {"k": k, "aggregation": aggregation, "routing": routing, "routed_layers": int(router.shape[0])}
        return LoadedSAE(
            sae=sae, source_library=self.source_library, format=self.name, architecture="routesae_topk",
            hook_name=request.hook or request.routed_hooks, training=training, notes=notes, path=str(path), route=spec,
        )  # fmt: skip


def refuse_single_layer(path: Path) -> None:
    """One line for the authors' bare single-layer SAE files, which look like OpenAI's but compute otherwise."""
    raise IncompatibleSAEError(
        f"{path.name} looks like a RouteSAEs single-layer baseline (signed TopK, inputs normalised with eps 1e-6), not an "
        "OpenAI autoencoder: saehealth does not load these yet; score the routed SAE instead."
    )
