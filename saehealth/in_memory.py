"""Evaluating SAEs and models that exist only in memory (a notebook, a training loop).

`evaluate(sae=obj, model=model, hook=...)` prepares here: the object is wrapped (loading/objects.py), never
copied; the model is the caller's `HookedTransformer` (or a name, loaded once); evaluation.py then runs the same
`Evaluation` steps as for a checkpoint, so the numbers are those of the same weights saved and evaluated from the command line.
Nothing is written unless `out=` is given; then the folder is reused only for the same SAE weights and, for a
model object, the same model weights (their fingerprints are part of the request).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from saehealth.config import EvalConfig
from saehealth.errors import ConfigError
from saehealth.fingerprint import weights_fingerprint
from saehealth.loading.objects import wrap_sae
from saehealth.models import DTYPES, check_hook, load_model
from saehealth.replay import sae_view, splice_site
from saehealth.result import EvalResult

# Per-latent details of in-memory results, while each result lives (results are unhashable dataclasses).
_DETAILS: dict[int, dict] = {}


def details_of(result: EvalResult) -> dict | None:
    """The per-latent details computed with an in-memory `result`, or None (a result loaded from disk)."""
    return _DETAILS.get(id(result))


def keep_details(result: EvalResult, details: dict) -> None:
    _DETAILS[id(result)] = details
    weakref.finalize(result, _DETAILS.pop, id(result), None)


def model_label(model) -> str:
    """The name a loaded model goes by: what saehealth loaded it as, else its TransformerLens name."""
    return getattr(model, "saehealth_name", None) or str(model.cfg.model_name)


def dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, value in DTYPES.items() if value == dtype), "float32")


def hook_width(model, hook: str) -> int:
    """The width an SAE reads at `hook` (attention heads flattened), from a two-token forward."""
    check_hook(model, hook)
    site = splice_site(hook)
    _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device), names_filter=[hook])
    return int(sae_view(cache[hook], site.head_dims, site.head_index).shape[-1])


def resolve_model(model, sae, options: dict[str, Any]):
    """(the HookedTransformer, its name): the object given, or the named model loaded (else the one a sae_lens
    SAE names), on the device and dtype of the options."""
    if model is not None and not isinstance(model, str):
        return model, model_label(model)
    name = model or getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "model_name", None)
    if name is None:
        raise ConfigError("Which model does this SAE read? Pass model=NAME or a loaded HookedTransformer.")
    from saehealth.config import resolve_device

    loaded = load_model(
        name, device=resolve_device(options.get("device", "auto")), dtype=options.get("dtype", "float32")
    )
    return loaded, name


def object_hook(sae, options: dict[str, Any]) -> str:
    """hook=, else layer= (its residual stream output), else the hook a sae_lens SAE records."""
    if options.get("hook"):
        return options["hook"]
    if options.get("layer") is not None:
        return f"blocks.{options['layer']}.hook_resid_post"
    recorded = getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "hook_name", None)
    if recorded is None:
        raise ConfigError("Which hook does this SAE read? Pass hook='blocks.N.hook_resid_post' (or layer=N).")
    return recorded


def prepare_object(sae, model=None, name: str | None = None, **options):
    """(LoadedSAE, model object, EvalConfig, request extras) for an in-memory SAE, before any pass."""
    model, model_name = resolve_model(model, sae, options)
    hook = object_hook(sae, options)
    loaded = wrap_sae(sae, d_in=hook_width(model, hook), hook=hook, model_name=model_name, name=name)
    options = {k: v for k, v in options.items() if k not in ("layer", "hook", "model")}
    options.setdefault("device", str(model.cfg.device))
    options.setdefault("dtype", dtype_name(model.cfg.dtype))
    for given in ("format", "activations"):
        if options.get(given) is not None:
            raise ConfigError(f"{given}= names a checkpoint or cache on disk; an SAE object is scored on the model.")
    config = EvalConfig(sae_path=loaded.path, model=model_name, hook=hook, **options)
    extras = {} if isinstance(model, str) else {"model_weights": weights_fingerprint(model)}
    return loaded, model, config, extras


def object_members(items, model, options: dict[str, Any]):
    """(model object, [(name, LoadedSAE, 0.0)], options for CompareConfig.of, request extras) for a comparison
    of SAE objects and checkpoint paths (a dict names its SAEs; objects are otherwise named by class)."""
    from saehealth.loading import load_checkpoint
    from saehealth.loading.objects import is_sae_object

    named = list(items.items()) if isinstance(items, dict) else [(None, item) for item in items]
    first_object = next((item for _, item in named if is_sae_object(item)), None)
    model, model_name = resolve_model(model, first_object, options)
    options = {**options, "model": model_name}
    options.setdefault("device", str(model.cfg.device))
    options.setdefault("dtype", dtype_name(model.cfg.dtype))
    members = []
    for i, (name, item) in enumerate(named):
        if is_sae_object(item):
            hook = object_hook(item, options)
            label = name or f"{type(item).__name__}_{i}"
            members.append((label, wrap_sae(item, d_in=hook_width(model, hook), hook=hook, model_name=model_name,
                                            name=label), 0.0))  # fmt: skip
            continue
        loaded = load_checkpoint(item, hook=options.get("hook"), device=options["device"], dtype=options["dtype"])
        if isinstance(loaded, list):
            raise ConfigError(f"{item} holds {len(loaded)} SAEs: list the ones to compare by their own paths.")
        members.append((str(item), loaded, 0.0))
    return model, members, options, {"model_weights": weights_fingerprint(model)}
