"""Load an SAE checkpoint written by any major SAE library as a SAELens `SAE` that computes what it computed.

Formats (auto-detected in this order; `format=` forces one, an unknown name lists the valid ones):

| format                | library             | on disk                                                            |
| --------------------- | ------------------- | ------------------------------------------------------------------ |
| `sae_lens_checkpoint` | SAELens             | training checkpoint: cfg.json + sae_weights.safetensors + trainer_state.pt / activation_scaler.json |
| `sae_lens`            | SAELens             | cfg.json + sae_weights.safetensors (v6, or pre-6.0 flat cfg.json)  |
| `sae_lens_multi`      | SAELens             | a folder of such folders (multi-SAE runner output or checkpoint, a run's checkpoints) |
| `sparsify`            | EleutherAI sparsify | cfg.json + sae.safetensors, or a run folder of such hookpoint folders |
| `basesae`             | home-grown BaseSAE  | a .pt state dict with its YAML config (model: type, hidden_size, ...) |
| `dictionary_learning` | dictionary_learning | ae.pt + config.json, or a folder of trainer_N/ folders             |
| `gemma_scope`         | Gemma Scope         | params.npz                                                         |
| `llama_scope`         | Llama Scope         | hyperparams.json + checkpoints/final.safetensors                   |
| `openai`              | openai/sparse_autoencoder | a .pt state dict with pre_bias and latent_bias              |
| `routesae`            | RouteSAEs (authors) | a .pt state dict with router.weight and sae.pre_bias (k, routing from the file name) |
| `routesae_seed`       | zach-perlman/SAEs   | a .pt state dict with router.router.weight, and the run's YAML     |
| `minsae`              | minSAE              | best_sae.pt / final_sae.pt (model_state_dict + config)             |
| `sae_lens_pretrained` | SAELens             | `release=` + `sae_id=` (needs the Hugging Face hub)                |

`.pt` files are read with `torch.load(weights_only=True)` only: a checkpoint that needs arbitrary unpickling is
refused, never executed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from saehealth.errors import CheckpointError
from saehealth.loading import (  # noqa: F401  (importing registers the adapters)
    architectures,
    from_basesae,
    from_dictionary_learning,
    from_gemma_scope,
    from_llama_scope,
    from_minsae,
    from_openai,
    from_routesae,
    from_routesae_seed,
    from_sae_lens,
    from_sparsify,
)
from saehealth.loading.base import (
    ADAPTERS,
    Adapter,
    LoadedSAE,
    LoadRequest,
    Registry,
    adapters_in_detection_order,
    register_adapter,
)
from saehealth.loading.detect import find_adapter, resolve
from saehealth.loading.files import INDEX, POSITIVE_INT, TEXT, check_fields, parse_dtype, require_path

# SAELens warns on every SAE built from a cfg with model_from_pretrained_kwargs, advising to load the model
# with them and no processing: saehealth does exactly that (models.load_model), so the advice is noise here.
warnings.filterwarnings("ignore", message="\nThis SAE has non-empty model_from_pretrained_kwargs", category=UserWarning)

__all__ = [
    "ADAPTERS",
    "Adapter",
    "LoadRequest",
    "LoadedSAE",
    "Registry",
    "available_formats",
    "detect_format",
    "load_checkpoint",
    "load_sae",
    "register_adapter",
]


def available_formats() -> list[str]:
    """The registered format names, in detection order."""
    return [adapter.name for adapter in adapters_in_detection_order()]


def detect_format(path: str | Path) -> str:
    """The format name of the checkpoint at `path`; CheckpointError when it is missing or unrecognised."""
    return find_adapter(resolve(require_path(path))).name


def load_checkpoint(
    path: str | Path | None = None,
    *,
    format: str | None = None,
    hook: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    release: str | None = None,
    sae_id: str | None = None,
    select: str | None = None,
    route: str | None = None,
    routed_hooks: str | None = None,
) -> LoadedSAE | list[LoadedSAE]:
    """Load the checkpoint at `path` (or the SAELens pretrained `release`/`sae_id`) as `LoadedSAE`.

    `format` forces an adapter instead of auto-detection. `device`/`dtype` place the SAE.

    A folder holding several SAEs (a sparsify run folder with one folder per hookpoint, a dictionary_learning
    sweep with trainer_N/ folders, a SAELens multi-SAE run) returns a list, one `LoadedSAE` per member,
    unless the choice is narrowed to one: `select` is a glob over member names (`layers.*`, `h.*.mlp`, `trainer_[01]`) and returns a list, or
    that SAE alone when it is an exact name; `hook` picks the member whose name or mapped TransformerLens hook
    equals it. For a single SAE, `hook` overrides the hook the checkpoint names (a note records it); for a routed
    SAE it is the comma-separated list of routed hooks, and `route` gives its other settings (routed/options.py).
    `routed_hooks` gives a routed SAE's hooks and nothing else's (compare: a list beside single-hook SAEs).
    """
    dtype = parse_dtype(dtype)
    request = LoadRequest(
        hook=hook, device=device, dtype=dtype, select=select, release=release, sae_id=sae_id, route=route,
        routed_hooks=routed_hooks,
    )  # fmt: skip
    if release is not None or sae_id is not None:
        adapter = ADAPTERS.get(format or "sae_lens_pretrained")
        if adapter.name != "sae_lens_pretrained":
            raise CheckpointError(
                f"release=/sae_id= load SAELens pretrained SAEs; they cannot be used with --format {format}."
            )
        loaded = adapter.load(None, request)
    else:
        if path is None:
            raise CheckpointError("No checkpoint given: pass a path (or release= and sae_id= for a SAELens release).")
        resolved = resolve(require_path(path))
        adapter = ADAPTERS.get(format) if format else find_adapter(resolved)
        loaded = adapter.load(resolved, request)
    for item in loaded if isinstance(loaded, list) else [loaded]:
        _check_recorded_facts(item)
    if isinstance(loaded, LoadedSAE) and hook and loaded.hook_name != hook:
        loaded.notes.append(f"hook set to {hook} (the checkpoint says {loaded.hook_name})")
        loaded.hook_name = hook
        loaded.sae.cfg.metadata.hook_name = hook
    return loaded


def _check_recorded_facts(loaded: LoadedSAE) -> None:
    """What any adapter read from a checkpoint's config about model, hook, context and data has the right type."""
    facts = {
        "model_name": loaded.model_name,
        "hook_name": loaded.hook_name,
        "output_hook_name": loaded.output_hook_name,
        "dataset_path": loaded.dataset_path,
        "context_size": loaded.context_size,
        "hook_head_index": getattr(loaded.sae.cfg.metadata, "hook_head_index", None),
    }
    kinds = {"context_size": POSITIVE_INT, "hook_head_index": INDEX}
    check_fields(
        facts, {name: kinds.get(name, TEXT) for name in facts}, f"{loaded.path or 'the checkpoint'} (its config)"
    )


def load_sae(path: str | Path | None = None, **kwargs):
    """The SAELens `SAE` of a checkpoint (see `load_checkpoint` for the options); a folder of several is an error."""
    loaded = load_checkpoint(path, **kwargs)
    if isinstance(loaded, list):
        names = ", ".join(Path(item.path or "?").name for item in loaded)
        raise CheckpointError(
            f"{path} holds {len(loaded)} SAEs ({names}): pick one with select=NAME or hook=HOOK, "
            "or use load_checkpoint for the list."
        )
    return loaded.sae
