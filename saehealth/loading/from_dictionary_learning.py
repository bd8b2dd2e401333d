"""dictionary_learning (saprmarks/dictionary_learning): `ae.pt` + `config.json`, or a folder of trainer_N/.

`ae.pt` is the dictionary's `state_dict()` saved with `torch.save`; `config.json` holds
`{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer", "lm_name", "submodule_name", ...},
"buffer": {"ctx_len", "io", ...}}`. Each class's forward and its exact SAELens counterpart:

| dict_class               | forward                                                   | SAELens                    |
| ------------------------ | --------------------------------------------------------- | -------------------------- |
| AutoEncoder              | relu(enc(x - bias)); dec(f) + bias                        | standard, b_dec on input   |
| AutoEncoderNew           | relu(enc(x)); dec(f) (dec has its own bias)               | standard, no b_dec on input |
| GatedAutoEncoder         | gate: enc(x - b) + gate_bias > 0; mag: relu(exp(r_mag) enc(x - b) + mag_bias) | gated |
| JumpReluAutoEncoder      | relu(pre * (pre > threshold)), pre = x W_enc + b_enc      | jumprelu, no b_dec on input |
| AutoEncoderTopK          | top-k of relu(enc(x - b_dec)) per token                   | topk                       |
| BatchTopKSAE             | relu(enc(x - b_dec)) kept where > threshold (inference)   | jumprelu, scalar threshold |
| MatryoshkaBatchTopKSAE   | as BatchTopKSAE with W_enc/b_enc parameters               | jumprelu, scalar threshold |

BatchTopK-style SAEs are evaluated the way the library runs them at inference, with the learned threshold
(`encode(use_threshold=True)`, its default), not with the batch-level top-k used in training.
Weights are taken as saved: dictionary_learning's `AutoEncoder.from_pretrained` would rescale the latents to
unit-norm decoder rows; reconstructions are the same either way, and a note reports non-unit decoder norms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.detect import select_members
from saehealth.loading.files import (
    load_torch_file,
    natural_key,
    orient,
    peek_torch_file,
    read_json,
    require_tensors,
    vector,
)
from saehealth.loading.hooks import map_dictionary_learning

AE = "ae.pt"
CONFIG = "config.json"
_CHECKPOINT_NAME = re.compile(r"ae(_\d+)?\.pt")

# Tensor names that identify each dictionary class when config.json is missing.
SIGNATURES: dict[str, set[str]] = {
    "MatryoshkaBatchTopKSAE": {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"},
    "JumpReluAutoEncoder": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "GatedAutoEncoder": {"encoder.weight", "decoder.weight", "decoder_bias", "r_mag", "gate_bias", "mag_bias"},
    "AutoEncoderNew": {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"},
    "AutoEncoder": {"encoder.weight", "encoder.bias", "decoder.weight", "bias"},
    "TopK-style": {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec"},
}
ARCHITECTURE_LABELS = {
    "AutoEncoder": "standard",
    "AutoEncoderNew": "standard",
    "GatedAutoEncoder": "gated",
    "JumpReluAutoEncoder": "jumprelu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka_batchtopk",
}
_SKIP_TRAINER_KEYS = {"device", "dict_class", "trainer_class"}


def _guess_class(keys: set[str]) -> str | None:
    for name, signature in SIGNATURES.items():
        if signature <= keys:
            return name
    return None


def _looks_like_state(obj: Any) -> bool:
    return (
        isinstance(obj, dict) and _guess_class({k for k, v in obj.items() if isinstance(v, torch.Tensor)}) is not None
    )


def _members(path: Path) -> list[str]:
    found = [child.name for child in path.iterdir() if child.is_dir() and (child / AE).is_file()]
    return sorted(found, key=natural_key)


def _find_config(ae_file: Path) -> Path | None:
    # ae.pt sits next to config.json; intermediate checkpoints sit in checkpoints/ below it.
    for folder in (ae_file.parent, ae_file.parent.parent):
        if (folder / CONFIG).is_file():
            return folder / CONFIG
    return None


@register_adapter
class DictionaryLearningAdapter(Adapter):
    """A dictionary_learning ae.pt (with config.json), its folder, or a sweep folder of trainer_N/."""

    name = "dictionary_learning"
    priority = 40
    source_library = "dictionary_learning"
    expected = f"dictionary_learning ({AE} + {CONFIG}, or a folder of trainer_N/ folders)"

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return (path / AE).is_file() or bool(_members(path))
        if path.suffix not in (".pt", ".pth"):
            return False
        return bool(_CHECKPOINT_NAME.fullmatch(path.name)) or _looks_like_state(peek_torch_file(path))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE | list[LoadedSAE]:
        if path.is_file():
            return self._load_one(path, request)
        if (path / AE).is_file():
            return self._load_one(path / AE, request)
        members = _members(path) if path.is_dir() else []
        if not members:
            raise CheckpointError(f"{path} has no {AE}: a dictionary_learning checkpoint is {AE} next to {CONFIG}.")
        hooks = {}
        for member in members:
            config = path / member / CONFIG
            trainer = read_json(config).get("trainer", {}) if config.is_file() else {}
            hooks[member] = map_dictionary_learning(trainer.get("submodule_name"), trainer.get("layer")).hook_name
        chosen, single = select_members(members, hooks, request, path)
        loaded = [self._load_one(path / member / AE, request) for member in chosen]
        return loaded[0] if single else loaded

    def _load_one(self, ae_file: Path, request: LoadRequest) -> LoadedSAE:
        state = load_torch_file(ae_file)
        if not isinstance(state, dict):
            raise CheckpointError(
                f"{ae_file} holds a {type(state).__name__}, not a state dict: re-save ae.state_dict()."
            )
        notes: list[str] = []
        config_path = _find_config(ae_file)
        config = read_json(config_path) if config_path else {}
        trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
        buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else {}
        keys = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
        dict_class = trainer.get("dict_class") or _guess_class(keys)
        if config_path is None:
            if dict_class == "TopK-style":
                raise CheckpointError(
                    f"{ae_file} has no {CONFIG} next to it, and its tensors fit both AutoEncoderTopK and "
                    f"BatchTopKSAE: restore {CONFIG} (it names the dict_class)."
                )
            notes.append(f"no {CONFIG}: dictionary class {dict_class} inferred from the tensor names")
        convert = _CONVERTERS.get(str(dict_class))
        if convert is None:
            known = ", ".join(_CONVERTERS)
            raise IncompatibleSAEError(f"{ae_file}: dictionary class {dict_class!r} is not supported (known: {known}).")
        architecture, config_fields, converted = convert(state, trainer, notes, ae_file)
        d_in, d_sae = config_fields["d_in"], config_fields["d_sae"]
        for key, actual in (("activation_dim", d_in), ("dict_size", d_sae)):
            if trainer.get(key) is not None and int(trainer[key]) != actual:
                raise IncompatibleSAEError(f"{config_path}: {key} is {trainer[key]} but {ae_file.name} holds {actual}.")

        mapping = map_dictionary_learning(trainer.get("submodule_name"), trainer.get("layer"), buffer.get("io", "out"))
        if mapping.note:
            notes.append(mapping.note)
        metadata = {
            "model_name": trainer.get("lm_name"),
            "hook_name": mapping.hook_name,
            "context_size": buffer.get("ctx_len"),
        }
        sae = build_sae(
            architecture, config_fields, converted, device=request.device, dtype=request.dtype,
            metadata=metadata, source=ae_file,
        )  # fmt: skip
        training = {k: v for k, v in trainer.items() if k not in _SKIP_TRAINER_KEYS and _plain(v)}
        training.update({f"buffer_{k}": v for k, v in buffer.items() if k != "device" and _plain(v)})
        training["dict_class"] = dict_class
        return LoadedSAE(
            sae=sae,
            source_library="dictionary_learning",
            format=self.name,
            architecture=ARCHITECTURE_LABELS.get(str(dict_class), str(dict_class)),
            hook_name=mapping.hook_name,
            model_name=trainer.get("lm_name"),
            context_size=buffer.get("ctx_len"),
            dataset_path=None,
            training=training,
            notes=notes,
            path=str(ae_file),
        )


def _plain(value: Any) -> bool:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value is not None
    return isinstance(value, list) and len(value) <= 64 and all(isinstance(v, (int, float, str)) for v in value)


def _decoder_norm_note(W_dec: torch.Tensor, notes: list[str]) -> None:
    norms = W_dec.float().norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        notes.append(
            f"decoder rows are not unit-norm ({float(norms.min()):.3g} to {float(norms.max()):.3g}): latents are "
            "as saved (dictionary_learning's from_pretrained would rescale them; reconstructions are unchanged)"
        )


def _scalar(state: dict[str, Any], key: str, fallback: Any, source: Path) -> float:
    value = state.get(key, fallback)
    if value is None:
        raise CheckpointError(f"{source} lacks {key!r} and config.json does not give it: restore config.json.")
    return float(value.item() if isinstance(value, torch.Tensor) else value)


Converted = tuple[str, dict[str, Any], dict[str, torch.Tensor]]


def _autoencoder(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["AutoEncoder"], source)
    d_in, d_sae = state["bias"].numel(), state["encoder.bias"].numel()
    W_dec = orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)")
    _decoder_norm_note(W_dec, notes)
    return (
        "standard",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True},
        {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(state["encoder.bias"], d_sae, "encoder.bias"),
            "W_dec": W_dec,
            "b_dec": vector(state["bias"], d_in, "bias"),
        },
    )


def _autoencoder_new(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["AutoEncoderNew"], source)
    d_in, d_sae = state["decoder.bias"].numel(), state["encoder.bias"].numel()
    W_dec = orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)")
    _decoder_norm_note(W_dec, notes)
    return (
        "standard",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False},
        {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(state["encoder.bias"], d_sae, "encoder.bias"),
            "W_dec": W_dec,
            "b_dec": vector(state["decoder.bias"], d_in, "decoder.bias"),
        },
    )


def _gated(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["GatedAutoEncoder"], source)
    d_in, d_sae = state["decoder_bias"].numel(), state["gate_bias"].numel()
    return (
        "gated",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True},
        {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_gate": vector(state["gate_bias"], d_sae, "gate_bias"),
            "b_mag": vector(state["mag_bias"], d_sae, "mag_bias"),
            "r_mag": vector(state["r_mag"], d_sae, "r_mag"),
            "W_dec": orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)"),
            "b_dec": vector(state["decoder_bias"], d_in, "decoder_bias"),
        },
    )


def _jumprelu(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["JumpReluAutoEncoder"], source)
    d_in, d_sae = state["b_dec"].numel(), state["b_enc"].numel()
    return (
        "jumprelu",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False},
        {
            "W_enc": orient(state["W_enc"], d_in, d_sae, "W_enc", notes, "(d_in, d_sae)"),
            "b_enc": vector(state["b_enc"], d_sae, "b_enc"),
            "W_dec": orient(state["W_dec"], d_sae, d_in, "W_dec", notes, "(d_sae, d_in)"),
            "b_dec": vector(state["b_dec"], d_in, "b_dec"),
            "threshold": vector(state["threshold"], d_sae, "threshold"),
        },
    )


def _topk(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["TopK-style"], source)
    d_in, d_sae = state["b_dec"].numel(), state["encoder.bias"].numel()
    k = int(_scalar(state, "k", trainer.get("k"), source))
    return (
        "topk",
        {"d_in": d_in, "d_sae": d_sae, "k": k, "apply_b_dec_to_input": True},
        {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(state["encoder.bias"], d_sae, "encoder.bias"),
            "W_dec": orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)"),
            "b_dec": vector(state["b_dec"], d_in, "b_dec"),
        },
    )


def _threshold_note(threshold: float, notes: list[str]) -> None:
    notes.append(f"inference threshold {threshold:.6g} (the library's use_threshold=True encode)")
    if threshold < 0:
        notes.append("the threshold was never estimated (negative): encode is a plain ReLU, as in the library")


def _batch_topk(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["TopK-style"], source)
    d_in, d_sae = state["b_dec"].numel(), state["encoder.bias"].numel()
    threshold = _scalar(state, "threshold", None, source)
    _threshold_note(threshold, notes)
    return (
        "jumprelu",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True},
        {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(state["encoder.bias"], d_sae, "encoder.bias"),
            "W_dec": orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)"),
            "b_dec": vector(state["b_dec"], d_in, "b_dec"),
            "threshold": torch.full((d_sae,), threshold, dtype=state["b_dec"].dtype),
        },
    )


def _matryoshka(state, trainer, notes, source) -> Converted:
    require_tensors(state, SIGNATURES["MatryoshkaBatchTopKSAE"], source)
    d_in, d_sae = state["b_dec"].numel(), state["b_enc"].numel()
    threshold = _scalar(state, "threshold", None, source)
    _threshold_note(threshold, notes)
    sizes = [int(s) for s in state["group_sizes"].reshape(-1).tolist()]
    if sum(sizes) != d_sae:
        raise IncompatibleSAEError(f"{source}: group_sizes add up to {sum(sizes)}, not dict_size {d_sae}.")
    notes.append(f"matryoshka groups {sizes}: all groups active, as the saved model runs")
    trainer.setdefault("group_sizes", sizes)
    return (
        "jumprelu",
        {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True},
        {
            "W_enc": orient(state["W_enc"], d_in, d_sae, "W_enc", notes, "(d_in, d_sae)"),
            "b_enc": vector(state["b_enc"], d_sae, "b_enc"),
            "W_dec": orient(state["W_dec"], d_sae, d_in, "W_dec", notes, "(d_sae, d_in)"),
            "b_dec": vector(state["b_dec"], d_in, "b_dec"),
            "threshold": torch.full((d_sae,), threshold, dtype=state["b_dec"].dtype),
        },
    )


_CONVERTERS = {
    "AutoEncoder": _autoencoder,
    "AutoEncoderNew": _autoencoder_new,
    "GatedAutoEncoder": _gated,
    "JumpReluAutoEncoder": _jumprelu,
    "AutoEncoderTopK": _topk,
    "BatchTopKSAE": _batch_topk,
    "MatryoshkaBatchTopKSAE": _matryoshka,
}
