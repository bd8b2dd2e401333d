"""Home-grown `BaseSAE` checkpoints: a `.pt` state dict saved next to (or above) the YAML config that built it.

The layout is the `SAEs` project's (`sae/models.py`, `sae/matryoshka.py`; `torch.save(model.state_dict())` to
`models/{type}_{layer}.pt` or `models/best_model.pt`, with no config beside the weights): its YAML's `model:`
section (type, hidden_size, latent_size, k, threshold, group_sizes, layer, language_model_path, ...) says what the
tensors mean. Each single-hook type becomes the SAELens SAE that computes what the original's `encode`/`decode`
compute (x is the hook's activation; pre = encoder(x − pre_bias)):

| type         | original forward                                               | SAELens equivalent              |
| ------------ | -------------------------------------------------------------- | ------------------------------- |
| VanillaSAE   | relu(pre + latent_bias) → decoder(·) + pre_bias                 | `standard`                      |
| TopKSAE      | topk_k(relu(pre + latent_bias)) → decoder(·) + pre_bias         | `topk` (topk then relu: equal)  |
| JumpReLUSAE  | p·[p > threshold], p = pre + latent_bias (no relu)              | `jumprelu` (thresholds ≥ 0), else `seed_jumprelu` (no relu) |
| GatedSAE     | [pre + gate_bias > 0] · relu(exp(r_mag)·pre + mag_bias)          | `gated` (b_gate, r_mag, b_mag)  |
| MatryoshkaSAE| relu((x − b_dec)@W_enc + b_enc), then per-token topk_k, or with a learned threshold θ ≥ 0 relu(·)·[relu(·) > θ] | `topk`, or `jumprelu` with θ on every latent |

The routed types (RouteSAE, RouteMatryoshkaSAE) read several hooks through a router: a checkpoint whose YAML
names one is handed to the routed loader (`from_routesae_seed.py`), never loaded as a single-hook SAE.

The YAML's `layer` is a Hugging Face `hidden_states` index: h ≥ 1 is the output of decoder layer h − 1, i.e.
TransformerLens `blocks.{h-1}.hook_resid_post`; h = 0 is the embeddings (`blocks.0.hook_resid_pre`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import ADAPTERS, Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import check_fields, load_torch_file, orient, peek_torch_file, require_tensors, vector

SINGLE_HOOK_TYPES = ("VanillaSAE", "TopKSAE", "JumpReLUSAE", "GatedSAE", "MatryoshkaSAE")
ROUTED_TYPES = ("RouteSAE", "RouteMatryoshkaSAE")
_YAML_SUFFIXES = (".yaml", ".yml")
_WEIGHT_SUFFIXES = (".pt", ".pth")
# The adapter that loads the routed types (saehealth/loading/from_routesae_seed.py): a folder or file of this
# layout whose YAML names one is handed to it.
ROUTED_ADAPTER = "routesae_seed"
ROUTER_KEY = "router.router.weight"


def read_model_config(path: Path) -> dict | None:
    """The YAML's whole content when it has a `model:` section naming a known `type`, else None (never raises)."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        return None
    return content if content["model"].get("type") in (*SINGLE_HOOK_TYPES, *ROUTED_TYPES) else None


def _yamls_near(folder: Path) -> list[Path]:
    """The YAML configs of BaseSAE models in `folder`, then in the `configs/` folder beside it (the project's
    layout: models/X.pt and configs/*.yaml under one root)."""
    for place in (folder, folder.parent / "configs"):
        if place.is_dir():
            found = [p for p in sorted(place.iterdir()) if p.suffix in _YAML_SUFFIXES and read_model_config(p)]
            if found:
                return found
    return []


def locate(path: Path) -> tuple[Path, Path] | None:
    """(weights file, YAML config) a path stands for, or None when it is not a BaseSAE checkpoint."""
    if path.is_dir():
        weights = [p for p in sorted(path.iterdir()) if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
        yamls = _yamls_near(path)
        if not weights or not yamls:
            return None
        config = read_model_config(yamls[0]) or {}
        named = [p for p in weights if p.stem.startswith(str(config["model"]["type"]))]
        return (named or weights)[0], yamls[0]
    if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
        yamls = _yamls_near(path.parent)
        return (path, yamls[0]) if yamls else None
    return None


@register_adapter
class BaseSAEAdapter(Adapter):
    """A home-grown BaseSAE state dict (.pt) with its YAML config (`model: type, hidden_size, latent_size, ...`)."""

    name = "basesae"
    source_library = "basesae"
    expected = "a BaseSAE state dict (.pt) with its YAML config (model: type, hidden_size, latent_size)"
    priority = 35  # before the bare .pt formats (openai shares the key names pre_bias/latent_bias)

    def detect(self, path: Path) -> bool:
        found = locate(path)
        state = peek_torch_file(found[0]) if found is not None else None
        if not isinstance(state, dict):
            return False
        # A routed .pt file (a router matrix, or a YAML naming a routed type) is the routed adapter's to detect
        # and explain; a folder holding one comes here and is handed over.
        routed = ROUTER_KEY in state or (read_model_config(found[1]) or {})["model"]["type"] in ROUTED_TYPES
        return path.is_dir() or not routed

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        found = locate(path)
        if found is None:
            raise CheckpointError(
                f"{path}: no .pt state dict with a YAML config (model: type ...) beside it or in ../configs/: "
                "put the training config next to the weights."
            )
        weights, config_path = found
        content = read_model_config(config_path) or {}
        model = content["model"]
        kind = str(model["type"])
        if kind in ROUTED_TYPES:  # routed over several layers: the routed loader's, on the weights file itself
            if ROUTED_ADAPTER not in ADAPTERS:
                raise CheckpointError(f"{weights} is a {kind}: saehealth's routed loader is not installed.")
            return ADAPTERS.get(ROUTED_ADAPTER).load(weights, request)
        state = load_torch_file(weights)
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights} holds no state dict: save model.state_dict().")
        notes = [f"config read from {config_path.name}"]
        architecture, fields, tensors, extra = convert_state(kind, model, state, weights, notes)
        hook = hook_of(model, notes)
        model_name = model.get("language_model_path")
        context = (content.get("training") or {}).get("max_length")
        dataset = (content.get("data") or {}).get("train_path")
        metadata = {"model_name": model_name, "hook_name": hook, "context_size": context, "dataset_path": dataset}
        check_fields(
            metadata,
            {"model_name": ("a string", lambda v: isinstance(v, str)), "context_size": _POSITIVE},
            config_path,
        )
        sae = build_sae(
            architecture, fields, tensors, device=request.device, dtype=request.dtype, metadata=metadata, source=weights
        )
        training = {key: model[key] for key in ("type", "k", "threshold", "bandwidth", "layer") if key in model}
        training.update(extra)
        for key in ("lr", "l1_coefficient", "batch_size", "steps", "auxk_alpha"):
            if key in (content.get("training") or {}):
                training[key] = content["training"][key]
        return LoadedSAE(
            sae=sae,
            source_library=self.source_library,
            format=self.name,
            architecture=architecture,
            hook_name=hook,
            model_name=model_name,
            context_size=context,
            dataset_path=dataset,
            training=training,
            notes=notes,
            path=str(weights),
        )


_POSITIVE = ("a whole number above 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)


def hook_of(model: dict, notes: list[str]) -> str | None:
    """The TransformerLens hook of the YAML's `layer` (a Hugging Face hidden_states index), or None."""
    layer = model.get("layer")
    if layer is None:
        notes.append("the config names no layer: pass --hook")
        return None
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise CheckpointError(f"model.layer must be a whole number, 0 or more, got {layer!r}: fix the YAML config.")
    n_layers = model.get("n_layers")
    if isinstance(n_layers, int) and layer >= n_layers:
        raise IncompatibleSAEError(
            f"model.layer {layer} is the model's last hidden state (after its final norm), which no hook splices: "
            "pass --hook."
        )
    hook = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    notes.append(f"hook mapped from hidden_states[{layer}] to {hook}")
    return hook


def convert_state(
    kind: str, model: dict, state: dict[str, Any], source: Path, notes: list[str]
) -> tuple[str, dict, dict[str, torch.Tensor], dict]:
    """(SAELens architecture, its config fields, its state dict, training facts) of one single-hook BaseSAE."""
    d_in, d_sae = model.get("hidden_size"), model.get("latent_size")
    check_fields({"hidden_size": d_in, "latent_size": d_sae}, {"hidden_size": _POSITIVE, "latent_size": _POSITIVE},
                 source, required=("hidden_size", "latent_size"))  # fmt: skip
    if kind == "MatryoshkaSAE":
        return _matryoshka(model, state, source, d_in, d_sae, notes)
    common = ("pre_bias", "encoder.weight", "decoder.weight")
    own = {"GatedSAE": ("gate_bias", "mag_bias", "r_mag"), "JumpReLUSAE": ("latent_bias", "threshold")}
    require_tensors(state, (*common, *own.get(kind, ("latent_bias",))), source)
    tensors = {
        "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(latent_size, hidden_size)"),
        "W_dec": orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(hidden_size, latent_size)"),
        "b_dec": vector(state["pre_bias"], d_in, "pre_bias"),
    }
    fields: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True}
    if kind == "GatedSAE":
        tensors |= {
            "b_gate": vector(state["gate_bias"], d_sae, "gate_bias"),
            "b_mag": vector(state["mag_bias"], d_sae, "mag_bias"),
            "r_mag": vector(state["r_mag"], d_sae, "r_mag"),
        }
        return "gated", fields, tensors, {}
    tensors["b_enc"] = vector(state["latent_bias"], d_sae, "latent_bias")
    if kind == "VanillaSAE":
        return "standard", fields, tensors, {}
    if kind == "TopKSAE":
        return "topk", fields | {"k": _k_of(model, d_sae, source)}, tensors, {}
    threshold = vector(state["threshold"], d_sae, "threshold")
    tensors["threshold"] = threshold
    if bool((threshold < 0).any()):
        # The original keeps negative pre-activations above a negative threshold; SAELens' jumprelu clips them.
        notes.append("some thresholds are negative: loaded as seed_jumprelu (JumpReLU without the ReLU)")
        return "seed_jumprelu", fields, tensors, {}
    return "jumprelu", fields, tensors, {}


def _k_of(model: dict, d_sae: int, source: Path) -> int:
    k = model.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae:
        raise CheckpointError(f"{source}: model.k must be a whole number from 1 to latent_size ({d_sae}), got {k!r}.")
    return k


def _matryoshka(model: dict, state: dict, source: Path, d_in: int, d_sae: int, notes: list[str]):
    require_tensors(state, ("W_enc", "b_enc", "W_dec", "b_dec"), source)
    tensors = {
        "W_enc": orient(state["W_enc"], d_in, d_sae, "W_enc", notes, "(hidden_size, latent_size)"),
        "b_enc": vector(state["b_enc"], d_sae, "b_enc"),
        "W_dec": orient(state["W_dec"], d_sae, d_in, "W_dec", notes, "(latent_size, hidden_size)"),
        "b_dec": vector(state["b_dec"], d_in, "b_dec"),
    }
    groups = state.get("group_sizes", model.get("group_sizes"))
    group_sizes = [int(g) for g in (groups.tolist() if isinstance(groups, torch.Tensor) else groups or [])]
    if group_sizes and sum(group_sizes) != d_sae:
        raise IncompatibleSAEError(f"{source}: group_sizes {group_sizes} sum to {sum(group_sizes)}, not {d_sae}.")
    extra = {"group_sizes": group_sizes} if group_sizes else {}
    fields: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True}
    learned = state.get("threshold")
    if isinstance(learned, torch.Tensor) and learned.numel() == 1 and float(learned) >= 0:
        # encode(use_threshold=True): relu(pre)·[relu(pre) > θ], which for θ ≥ 0 is relu(pre)·[pre > θ].
        notes.append(f"the learned inference threshold {float(learned):.6g} is used (encode(use_threshold=True))")
        tensors["threshold"] = vector(learned.float(), d_sae, "threshold")
        return "jumprelu", fields, tensors, extra
    if isinstance(learned, torch.Tensor):  # trained with batch TopK, threshold never set: per-token TopK stands in
        notes.append("no learned threshold (still -1): encoded with per-token TopK k, not the batch TopK of training")
    return "topk", fields | {"k": _k_of(model, d_sae, source)}, tensors, extra
