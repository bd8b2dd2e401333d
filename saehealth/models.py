"""Resolve a model name to a TransformerLens `HookedTransformer`, and check hooks against it.

Accepted names: the built-in model (`saehealth.BUILTIN_MODEL`), a local directory (saehealth's own
layout, or a Hugging Face checkpoint of an architecture TransformerLens supports), or a TransformerLens
pretrained name (downloaded from the hub by TransformerLens itself).

Pretrained and Hugging Face models are loaded without TransformerLens' weight processing
(`from_pretrained_no_processing`), as SAELens loads them for training and as sparsify and dictionary_learning
see them through Hugging Face: processing such as `center_writing_weights` shifts every residual-stream
activation, and an SAE must be replayed on the activations it was trained on. A SAELens checkpoint's
`model_from_pretrained_kwargs` are applied on top, as SAELens applies them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from saehealth import builtin
from saehealth.errors import IncompatibleSAEError, ModelError, suggest

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name ('float32', 'bfloat16', ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in DTYPES:
        raise ModelError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


# What `from_pretrained_no_processing` sets; a checkpoint's kwargs may change any of them.
NO_PROCESSING = {
    "fold_ln": False,
    "center_writing_weights": False,
    "center_unembed": False,
    "refactor_factored_attn_matrices": False,
    "fold_value_biases": False,
}
_OURS = ("device", "dtype", "hf_model", "tokenizer", "model_name")  # saehealth's own options decide these


def processing(from_pretrained_kwargs: dict | None) -> dict:
    """The keyword arguments a pretrained model is loaded with: no processing, then the checkpoint's kwargs."""
    extra = {k: v for k, v in (from_pretrained_kwargs or {}).items() if k not in _OURS}
    return {**NO_PROCESSING, **extra}


def processing_label(from_pretrained_kwargs: dict | None) -> str:
    """What differs from no processing, as 'center_writing_weights=True', or 'no processing'."""
    changed = {k: v for k, v in processing(from_pretrained_kwargs).items() if NO_PROCESSING.get(k, None) != v}
    return ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())) or "no processing"


def load_model(
    name: str,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    from_pretrained_kwargs: dict | None = None,
    context: int | None = None,
):
    """A `HookedTransformer` for the built-in model, a local directory or a TransformerLens name.

    `from_pretrained_kwargs` (a SAELens checkpoint's `model_from_pretrained_kwargs`) go to TransformerLens'
    `from_pretrained` for pretrained and Hugging Face models, on top of no weight processing. `context` (the
    tokens per sequence the evaluation needs) lifts the context TransformerLens caps some families at for memory
    (Mistral and Qwen3 at 2,048, Gemma at 8,192) up to what the model allows.
    """
    model = _load_model(name, device, resolve_dtype(dtype), from_pretrained_kwargs, context)
    model.saehealth_name = name  # what it was loaded as: an evaluation of this object names the model the same
    return model


def _load_model(
    name: str, device: str, torch_dtype: torch.dtype, from_pretrained_kwargs: dict | None, context: int | None
):
    if name == builtin.BUILTIN_MODEL:
        return _load_saehealth_layout(builtin.assets_dir(), device, torch_dtype)
    path = Path(name).expanduser()
    kwargs = processing(from_pretrained_kwargs)
    if path.is_dir():
        if (path / builtin.MODEL_CONFIG_FILE).is_file():
            return _load_saehealth_layout(path, device, torch_dtype)
        if (path / "config.json").is_file():
            return _load_hf_directory(path, device, torch_dtype, kwargs, context)
        raise ModelError(
            f"{path} holds no model: expected {builtin.MODEL_CONFIG_FILE} + {builtin.MODEL_WEIGHTS_FILE} "
            "(saehealth layout) or a Hugging Face config.json with weights."
        )
    return _load_pretrained(name, device, torch_dtype, kwargs, context)


def _hooked_transformer():
    # TransformerLens 3 warns that HookedTransformer is deprecated in favour of TransformerBridge;
    # SAELens still builds on HookedTransformer, so we do too, without the noise.
    warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
    from transformer_lens import HookedTransformer

    return HookedTransformer


def _load_saehealth_layout(folder: Path, device: str, dtype: torch.dtype):
    """Config JSON (HookedTransformerConfig fields) + safetensors weights + tokenizer/ folder."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    HookedTransformer = _hooked_transformer()
    config = _read_json(folder / builtin.MODEL_CONFIG_FILE)
    weights = folder / builtin.MODEL_WEIGHTS_FILE
    try:
        cfg = HookedTransformerConfig(**config, device=device, dtype=dtype)
    except Exception as exc:  # TypeError (unknown field), ValueError or AssertionError (inconsistent sizes)
        raise ModelError(
            f"{folder / builtin.MODEL_CONFIG_FILE} is not a valid HookedTransformerConfig ({_first_line(exc)}): "
            "restore the model folder."
        ) from None
    try:
        model = HookedTransformer(cfg, tokenizer=builtin.load_builtin_tokenizer(folder))
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # a missing/corrupt tokenizer or weights file, weights that do not fit the config
        raise ModelError(
            f"The model in {folder} cannot be loaded ({_first_line(exc)}): restore the model folder."
        ) from None
    model.eval()
    return model


def _read_json(path: Path) -> dict:
    """A JSON object from a model folder's config file; ModelError when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{path} is not valid JSON ({_first_line(exc)}): restore the model folder.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a JSON {type(data).__name__}, not an object: restore the model folder.")
    return data


def _check_hf_weights(path: Path) -> None:
    """Refuse a Hugging Face folder whose .bin weights need arbitrary unpickling, as SAE files are refused."""
    from saehealth.errors import CheckpointError
    from saehealth.loading.files import load_torch_file

    if any(path.glob("*.safetensors")):
        return  # transformers prefers them and never unpickles
    for weights in sorted(path.glob("*.bin")):
        try:
            load_torch_file(weights, mmap=True)
        except CheckpointError as exc:
            raise ModelError(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _load_hf_directory(path: Path, device: str, dtype: torch.dtype, kwargs: dict, n_ctx: int | None = None):
    """A local Hugging Face checkpoint of an architecture TransformerLens converts, its configuration decided by
    its own config.json and never by the folder's name (`model_folders.py`): nothing is fetched from the hub."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from saehealth import model_folders

    hf_logging.disable_progress_bar()  # a bar per load is noise in saehealth's output
    on_disk = _read_json(path / "config.json")  # one-line errors for a config that is unreadable or not JSON
    if on_disk.get("architectures"):
        model_folders.architecture_of(path, on_disk)  # refuse what cannot be converted before loading weights
    _check_hf_weights(path)
    local = str(path.resolve())
    options = dict(kwargs)
    steps = {name: options.pop(name) for name in list(options) if name in NO_PROCESSING}
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(local, dtype=dtype)
    except Exception as exc:  # OSError (missing files), ValueError, pickle refusals: transformers raises many
        raise ModelError(
            f"The Hugging Face model in {path} cannot be loaded ({_first_line(exc)}): check the folder's files."
        ) from None
    tokenizer = _folder_tokenizer(path)
    # transformers' view of the config (its defaults filled in); the class it built when config.json names none
    hf_config = {
        **hf_model.config.to_dict(),
        "architectures": on_disk.get("architectures") or [type(hf_model).__name__],
    }
    try:
        cfg = model_folders.transformer_lens_config(
            path, hf_config, device=device, dtype=dtype, fold_ln=steps.get("fold_ln", False), n_ctx=n_ctx, **options
        )
        state_dict = loading.get_pretrained_state_dict(local, cfg, hf_model, dtype=dtype)
    except (NotImplementedError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ModelError(
            f"TransformerLens cannot convert the Hugging Face model in {path} ({_first_line(exc)}): "
            f"saehealth loads {', '.join(sorted(model_folders.supported_architectures()))}."
        ) from None
    model = _hooked_transformer()(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **steps)
    model.move_model_modules_to_device()
    model.eval()
    return model


def _folder_tokenizer(path: Path):
    """The folder's tokenizer; ModelError naming what is missing (a pretokenized dataset still needs it: the
    masks of special tokens and the latent examples' text come from it)."""
    from transformers import AutoTokenizer

    advice = (
        "save the tokenizer the model was trained with into it (tokenizer.save_pretrained(folder)); saehealth "
        "needs it even for a pretokenized dataset, to know BOS/EOS/padding and to show latent examples as text."
    )
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        # transformers 5 would build an empty tokenizer of the model's type: refuse instead
        raise ModelError(f"The model folder {path} has no usable tokenizer (no {_TOKENIZER_FILES[0]}): {advice}")
    try:
        return AutoTokenizer.from_pretrained(str(path.resolve()))
    except Exception as exc:  # OSError, ValueError ("Couldn't instantiate the backend tokenizer"), ...
        raise ModelError(f"The model folder {path} has no usable tokenizer ({_first_line(exc)}): {advice}") from None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _official_name(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _load_pretrained(name: str, device: str, dtype: torch.dtype, kwargs: dict, context: int | None = None):
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    official = _official_name(name)
    if official is None:
        raise ModelError(
            f"Unknown model {name!r}: give {builtin.BUILTIN_MODEL!r} (the built-in model), a local model "
            f"directory, or a TransformerLens model name.{suggest(name, OFFICIAL_MODEL_NAMES)}"
        )
    if context is not None and "n_ctx" not in kwargs:
        default = _pretrained_context(official)
        if default is not None and context > default:
            kwargs = {**kwargs, "n_ctx": context}  # TransformerLens caps some families for memory: lift it
    try:
        model = _hooked_transformer().from_pretrained(official, device=device, dtype=dtype, **kwargs)
    except OSError as exc:  # hub unreachable or files missing
        raise ModelError(
            f"Could not download {official!r} from the Hugging Face hub ({type(exc).__name__}); "
            "check network access, or save the model to a folder (its config.json, weights and tokenizer, as "
            "save_pretrained writes them) and pass that folder with --model."
        ) from exc
    model.eval()
    return model


def _pretrained_context(official: str) -> int | None:
    """TransformerLens' context for an official name, when it knows it without the hub (name-driven families)."""
    from transformer_lens import loading_from_pretrained as loading

    try:
        return int(loading.convert_hf_model_config(official)["n_ctx"])
    except Exception:  # noqa: BLE001  # config-driven families need the hub: leave the context as it is
        return None


def hook_names(model) -> list[str]:
    """Every hook point of the model."""
    return list(model.hook_dict)


def check_hook(model, hook_name: str) -> None:
    """Raise if the model has no such hook, naming the nearest ones."""
    if hook_name not in model.hook_dict:
        raise IncompatibleSAEError(
            f"The model has no hook {hook_name!r}.{suggest(hook_name, hook_names(model))} "
            f"Layers run from 0 to {model.cfg.n_layers - 1}."
        )
