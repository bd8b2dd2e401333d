"""SAELens checkpoints: saved SAE folders (v6 and pre-v6 flat cfg.json), training checkpoints, pretrained releases.

- `sae_lens`: a folder with `cfg.json` + `sae_weights.safetensors`, loaded by SAELens' own `SAE.load_from_disk`
  (which also upgrades pre-6.0 flat configs).
- `sae_lens_checkpoint`: a folder written during training (`trainer_state.pt`, `activation_scaler.json`, or a
  training-only architecture such as `batchtopk` in `cfg.json`). The training SAE is loaded, the activation
  scaler's normalisation factor (and whitening) is folded into the weights exactly as SAELens does at the end
  of training, and it is converted into the inference SAE SAELens would have saved.
- `sae_lens_multi`: a folder of such folders: what SAELens' multi-SAE runner writes (one folder per SAE beside
  `runner_cfg.json`, also in each of its training checkpoints), or a run's checkpoints folder (one folder per
  checkpoint). Each member loads as above; `select=` / `hook=` pick members.
- `sae_lens_pretrained`: `release=` and `sae_id=` through SAELens' `SAE.from_pretrained`; it needs the
  Hugging Face hub, so offline it fails with a `CheckpointError` saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saehealth.errors import CheckpointError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.detect import find_adapter, select_members
from saehealth.loading.files import (
    INDEX,
    POSITIVE_INT,
    TEXT,
    check_fields,
    check_finite,
    check_safetensors,
    natural_key,
    read_json,
    state_dict_error,
)

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
RUNNER_CFG = "runner_cfg.json"
SCALER = "activation_scaler.json"
TRAINER_STATE = "trainer_state.pt"

# Top-level runner/config keys worth keeping as training facts (pre-6.0 cfg.json files hold them flat).
TRAINING_KEYS = (
    "training_tokens", "lr", "lr_scheduler_name", "lr_warm_up_steps", "lr_decay_steps", "train_batch_size_tokens",
    "l1_coefficient", "l1_warm_up_steps", "lp_norm", "k", "normalize_activations", "d_sae", "expansion_factor",
    "seed", "architecture", "activation_fn", "activation_fn_str", "b_dec_init_method", "dead_feature_window",
    "feature_sampling_window", "use_ghost_grads", "finetuning_tokens", "total_training_steps", "n_checkpoints",
    "store_batch_size_prompts", "n_batches_in_buffer", "mse_loss_normalization", "scale_sparsity_penalty_by_decoder_norm",
    "decoder_heuristic_init", "init_encoder_as_decoder_transpose", "prepend_bos",
)  # fmt: skip
_SKIP_SAE_KEYS = {"metadata", "device", "dtype"}
# What cfg.json's fields must be, at top level or in metadata (pre-6.0 configs keep them flat).
CFG_FIELDS = {
    "d_in": POSITIVE_INT,
    "d_sae": POSITIVE_INT,
    "k": POSITIVE_INT,
    "context_size": POSITIVE_INT,
    "hook_head_index": INDEX,
    "hook_name": TEXT,
    "hook_point": TEXT,
    "hook_name_out": TEXT,
    "model_name": TEXT,
    "dataset_path": TEXT,
    "architecture": TEXT,
}


def _is_training_only_architecture(cfg: dict[str, Any]) -> bool:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return isinstance(arch, str) and arch in SAE_TRAINING_CLASS_REGISTRY and arch not in SAE_CLASS_REGISTRY


def _looks_like_training_checkpoint(path: Path) -> bool:
    if (path / TRAINER_STATE).exists() or (path / SCALER).exists():
        return True
    try:
        import json

        return _is_training_only_architecture(json.loads((path / CFG).read_text()))
    except (OSError, ValueError):
        return False


def _pre_v6(version: Any) -> bool:
    from packaging.version import InvalidVersion, Version

    if not version:
        return True
    try:
        return Version(str(version)) < Version("6.0.0rc0")
    except InvalidVersion:
        return False


def _has_folder_files(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def _scalar_items(data: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """JSON-able scalars and short lists of `data` (all of them, or those in `keys`)."""
    out = {}
    for key, value in data.items():
        if keys is not None and key not in keys:
            continue
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        elif isinstance(value, list) and len(value) <= 64 and all(isinstance(v, (int, float, str)) for v in value):
            out[key] = value
    return out


def training_facts(cfg: dict[str, Any], runner_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """What a SAELens folder records about training: runner_cfg.json, then cfg.json (pre-6.0 keeps it flat)."""
    facts: dict[str, Any] = {}
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    facts.update(_scalar_items(cfg, TRAINING_KEYS))
    details = metadata.get("training_architecture_details")
    if isinstance(details, dict):
        facts.update(_scalar_items(details))
    for key in ("training_architecture", "l0", "num_dead_features", "sae_lens_training_version"):
        if metadata.get(key) is not None:
            facts[key] = metadata[key]
    if runner_cfg:
        facts.update(_scalar_items(runner_cfg, TRAINING_KEYS))
        sae_part = runner_cfg.get("sae")
        if isinstance(sae_part, dict):
            facts.update(_scalar_items({k: v for k, v in sae_part.items() if k not in _SKIP_SAE_KEYS}))
    return facts


def _read_runner_cfg(path: Path) -> dict[str, Any] | None:
    runner = path / RUNNER_CFG
    return read_json(runner) if runner.is_file() else None


def _loaded(sae, fmt: str, path: Path, cfg: dict[str, Any], runner: dict[str, Any] | None, notes: list[str]):
    meta = sae.cfg.metadata
    architecture = sae.cfg.architecture()
    training_arch = meta.get("training_architecture")
    if training_arch and training_arch != architecture:
        notes.append(f"trained as {training_arch}, saved for inference as {architecture}")
        architecture = training_arch
    return LoadedSAE(
        sae=sae,
        source_library="sae_lens",
        format=fmt,
        architecture=architecture,
        hook_name=meta.get("hook_name"),
        output_hook_name=meta.get("hook_name_out"),
        model_name=meta.get("model_name"),
        context_size=meta.get("context_size"),
        dataset_path=meta.get("dataset_path"),
        training=training_facts(cfg, runner),
        notes=notes,
        path=str(path),
        recorded_dtype=_recorded_dtype(cfg, runner),
    )


def _recorded_dtype(cfg: dict[str, Any], runner: dict[str, Any] | None) -> str | None:
    """The dtype SAELens trained in (runner_cfg.json's, else cfg.json's `dtype`), when it names a known one."""
    from saehealth.loading.files import DTYPES

    for source in (runner or {}, cfg):
        name = str(source.get("dtype", "")).removeprefix("torch.")
        if name in DTYPES:
            return name
    return None


def _check_folder(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: a SAELens checkpoint is a folder with {CFG} and {WEIGHTS}.")
    cfg = read_json(path / CFG, required=("d_in", "d_sae")) if (path / CFG).is_file() else None
    if cfg is None:
        raise CheckpointError(f"{path} has no {CFG}: a SAELens checkpoint folder holds {CFG} and {WEIGHTS}.")
    check_fields(cfg, CFG_FIELDS, path / CFG)
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path / CFG}: metadata is not an object: restore the original file.")
    check_fields(metadata, CFG_FIELDS, path / CFG)
    check_safetensors(path / WEIGHTS)  # a readable header of floating-point tensors
    return cfg


def _load_or_explain(load, path: Path, architecture):
    """`load()` with SAELens' errors for a config or weights that do not fit as one line each."""
    try:
        return load()
    except (KeyError, ValueError, TypeError) as exc:
        raise _config_error(path, exc) from None
    except RuntimeError as exc:  # torch's load_state_dict: missing, unknown or misshapen tensors
        raise state_dict_error(exc, path / WEIGHTS, f"a SAELens {architecture} SAE with this {CFG}") from None


def _config_error(path: Path, exc: Exception) -> CheckpointError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(f"{path / CFG} cannot be read as a SAELens config ({detail}): restore the original file.")


@register_adapter
class SaeLensCheckpointAdapter(Adapter):
    """A SAELens training checkpoint folder (activation scaler folded in, converted for inference)."""

    name = "sae_lens_checkpoint"
    priority = 10
    source_library = "sae_lens"
    expected = f"SAELens training checkpoint ({CFG} + {WEIGHTS} + {TRAINER_STATE} or {SCALER})"

    def detect(self, path: Path) -> bool:
        return _has_folder_files(path) and _looks_like_training_checkpoint(path)

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        from sae_lens import TrainingSAE
        from sae_lens.training.activation_scaler import ActivationScaler

        cfg = _check_folder(path)
        runner = _read_runner_cfg(path)
        notes: list[str] = ["SAELens training checkpoint converted to its inference SAE"]
        # float32 on the CPU for the folding arithmetic; moved to the requested device/dtype at the end.
        training_sae = _load_or_explain(
            lambda: TrainingSAE.load_from_disk(path, device="cpu", dtype="float32"), path, cfg.get("architecture")
        )
        if (path / SCALER).is_file():
            read_json(path / SCALER, required=("scaling_factor",))
            scaler = ActivationScaler()
            scaler.load(path / SCALER)
            if scaler.scaling_factor is not None:
                training_sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
                notes.append(f"activation norm scaling factor {scaler.scaling_factor:.6g} folded into the weights")
            if scaler.whitening is not None:
                w = scaler.whitening
                training_sae.fold_activation_whitening(w.mean, w.matrix, w.inverse_matrix)
                notes.append("activation whitening folded into the weights")
        elif training_sae.cfg.normalize_activations == "expected_average_only_in":
            notes.append(
                f"cfg.json says normalize_activations=expected_average_only_in but there is no {SCALER}: "
                "the SAE is applied to raw activations"
            )
        state = training_sae.state_dict()
        training_sae.process_state_dict_for_saving_inference(state)
        inference = training_sae.cfg.get_inference_sae_cfg_dict()
        architecture = inference.pop("architecture")
        metadata = inference.pop("metadata")
        inference.pop("device", None)
        inference.pop("dtype", None)
        sae = build_sae(
            architecture, inference, state, device=request.device, dtype=request.dtype, metadata=metadata, source=path
        )
        return _loaded(sae, self.name, path, cfg, runner, notes)


@register_adapter
class SaeLensFolderAdapter(Adapter):
    """A saved SAELens SAE folder, v6 or pre-6.0 (flat cfg.json)."""

    name = "sae_lens"
    priority = 20
    source_library = "sae_lens"
    expected = f"SAELens ({CFG} + {WEIGHTS})"

    def detect(self, path: Path) -> bool:
        return _has_folder_files(path)

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        from sae_lens import SAE

        cfg = _check_folder(path)
        if _is_training_only_architecture(cfg):
            raise CheckpointError(
                f"{path} is a SAELens training checkpoint (architecture {cfg['architecture']!r}): "
                "load it with --format sae_lens_checkpoint."
            )
        runner = _read_runner_cfg(path)
        notes: list[str] = []
        version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
        if _pre_v6(version):
            notes.append(f"pre-6.0 SAELens config (version {version or 'unknown'}) upgraded by SAELens")
        sae = _load_or_explain(
            lambda: SAE.load_from_disk(path, device=request.device, dtype=request.dtype), path, cfg.get("architecture")
        )
        check_finite(sae.state_dict(), path / WEIGHTS)
        sae.eval()
        if sae.cfg.normalize_activations == "expected_average_only_in":
            notes.append(
                "cfg.json says normalize_activations=expected_average_only_in with no scaling factor saved: "
                "the SAE is applied to raw activations, as SAELens does"
            )
        return _loaded(sae, self.name, path, cfg, runner, notes)


def _member_folders(path: Path) -> list[str]:
    """Names of the SAELens SAE folders directly inside `path`, naturally sorted (none when `path` is one)."""
    if not path.is_dir() or (path / CFG).exists():
        return []
    return sorted((child.name for child in path.iterdir() if _has_folder_files(child)), key=natural_key)


def _member_hook(folder: Path) -> str | None:
    cfg = read_json(folder / CFG)
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    return metadata.get("hook_name") or cfg.get("hook_name")  # v6, else a pre-6.0 flat cfg.json


@register_adapter
class SaeLensMultiAdapter(Adapter):
    """A folder of SAELens SAE folders: a multi-SAE run's output or checkpoint, or a run's checkpoints."""

    name = "sae_lens_multi"
    priority = 25
    source_library = "sae_lens"
    expected = f"a folder of SAELens folders ({CFG} + {WEIGHTS} in each)"

    def detect(self, path: Path) -> bool:
        return bool(_member_folders(path))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE | list[LoadedSAE]:
        members = _member_folders(path)
        if not members:
            raise CheckpointError(f"{path} holds no SAELens SAE folder: each needs {CFG} and {WEIGHTS}.")
        hooks = {member: _member_hook(path / member) for member in members}
        chosen, single = select_members(members, hooks, request, path)
        runner = _read_runner_cfg(path)  # the multi-SAE runner's, shared by its members
        loaded = []
        for member in chosen:
            folder = path / member
            item = find_adapter(folder).load(folder, request)  # a training checkpoint or a saved SAE
            if runner and not (folder / RUNNER_CFG).is_file():
                item.training = {**_scalar_items(runner, TRAINING_KEYS), **item.training}
            loaded.append(item)
        return loaded[0] if single else loaded


@register_adapter
class SaeLensPretrainedAdapter(Adapter):
    """A pretrained SAELens release (`release=`, `sae_id=`), fetched from the Hugging Face hub by SAELens."""

    name = "sae_lens_pretrained"
    priority = 90
    source_library = "sae_lens"
    expected = "a SAELens pretrained release (pass release= and sae_id=)"

    def detect(self, path: Path) -> bool:
        return False  # chosen by release=/sae_id=, never by looking at a path

    def load(self, path: Path | None, request: LoadRequest) -> LoadedSAE:
        from sae_lens import SAE

        release, sae_id = request.release, request.sae_id
        if not release or not sae_id:
            raise CheckpointError(
                "A SAELens pretrained SAE needs both release= and sae_id= (e.g. --release R --sae-id ID)."
            )
        try:
            sae, cfg, _ = SAE.from_pretrained_with_cfg_and_sparsity(
                release, sae_id, device=request.device, dtype=request.dtype
            )
        except ValueError as exc:  # unknown release or sae_id: SAELens lists the valid ones
            raise CheckpointError(f"SAELens release {release!r}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # no network / hub access: huggingface_hub and requests raise many types
            raise CheckpointError(
                f"Could not fetch SAELens release {release!r} / {sae_id!r} from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no detail'}): "
                "download it where the hub is reachable and pass the local folder instead."
            ) from None
        sae.eval()
        loaded = _loaded(sae, self.name, Path(release), cfg, None, [f"SAELens pretrained release {release} / {sae_id}"])
        loaded.path = f"{release}/{sae_id}"
        return loaded
