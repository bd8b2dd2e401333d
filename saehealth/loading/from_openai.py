"""openai/sparse_autoencoder: a `.pt` file holding `Autoencoder.state_dict()`.

The state dict has `pre_bias` (d_in), `latent_bias` (d_sae), `encoder.weight` (d_sae, d_in),
`decoder.weight` (d_in, d_sae), statistics buffers, and `activation` ("TopK" or "ReLU") with
`activation_state_dict` ({"k", "postact_fn"}). `Autoencoder.from_state_dict` turns on input normalisation
exactly when the activation is TopK. The forward:

    x, mu, std = LN(x)   (TopK only: x - mean, divided by (std + 1e-5), std unbiased)
    f = activation(encoder(x - pre_bias) + latent_bias)
    x_hat = (decoder(f) + pre_bias) * std + mu

SAELens' `normalize_activations="layer_norm"` is this same LN (same eps, same unbiased std, and it undoes it on
decode), so a TopK autoencoder is a stock `TopKSAE` with layer_norm and `apply_b_dec_to_input=True`; a ReLU one
is a `StandardSAE`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import load_torch_file, orient, peek_torch_file, require_tensors, vector

_LOCATIONS = {
    "resid_post_mlp": "blocks.{n}.hook_resid_post",
    "resid_post_attn": "blocks.{n}.hook_resid_mid",
    "resid_delta_mlp": "blocks.{n}.hook_mlp_out",
    "resid_delta_attn": "blocks.{n}.hook_attn_out",
    "mlp_post_act": "blocks.{n}.mlp.hook_post",
}
_LOCATION = re.compile("(" + "|".join(_LOCATIONS) + ")")


def _is_openai_state(obj: Any) -> bool:
    # `Autoencoder.state_dict()` always stores `activation`; the RouteSAEs authors' single-layer files have the
    # same three tensors without it and compute something else (signed TopK, eps 1e-6): not claimed here.
    return (
        isinstance(obj, dict)
        and "activation" in obj
        and all(isinstance(obj.get(k), torch.Tensor) for k in ("pre_bias", "latent_bias", "encoder.weight"))
    )


def _decoder(state: dict[str, Any], d_in: int, d_sae: int, notes: list[str], source: Path) -> torch.Tensor:
    if isinstance(state.get("decoder.weight"), torch.Tensor):
        return orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_in, d_sae)")
    if isinstance(state.get("decoder.linear.weight"), torch.Tensor):  # tied: decoder = encoder transposed
        notes.append("tied decoder: W_dec is the encoder's weight")
        return orient(
            state["decoder.linear.weight"], d_sae, d_in, "encoder.weight (tied decoder)", notes, "(d_sae, d_in)"
        )
    raise CheckpointError(f"{source} lacks decoder.weight: it is not a complete openai/sparse_autoencoder state dict.")


def _hook_from_path(path: Path, notes: list[str]) -> tuple[str | None, str | None]:
    """The hook and model from OpenAI's published layout (`gpt2-small/resid_post_mlp_v5_32k/autoencoders/5.pt`)."""
    text = "/".join(path.resolve().parts)
    location = _LOCATION.search(text)
    model = "gpt2" if "gpt2-small" in text else None
    if location and path.stem.isdigit():
        hook = _LOCATIONS[location.group(1)].format(n=int(path.stem))
        notes.append(f"hook read from the path ({location.group(1)}, layer {path.stem})")
    else:
        hook = None
        notes.append("the file does not name its hook, nor does its path: pass --hook")
    if model:
        notes.append("OpenAI's GPT-2 autoencoders read activations of a model loaded with center_writing_weights=False")
    return hook, model


@register_adapter
class OpenAIAdapter(Adapter):
    """An openai/sparse_autoencoder state dict (.pt)."""

    name = "openai"
    source_library = "openai"
    expected = "openai/sparse_autoencoder (a .pt state dict with pre_bias and latent_bias)"
    priority = 70

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix in (".pt", ".pth") and _is_openai_state(peek_torch_file(path))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        if not path.is_file():
            raise CheckpointError(
                f"{path} is not a file: an openai/sparse_autoencoder checkpoint is one .pt state dict."
            )
        state = load_torch_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
        require_tensors(state, ("pre_bias", "latent_bias", "encoder.weight"), path)
        notes: list[str] = []
        d_in, d_sae = state["pre_bias"].numel(), state["latent_bias"].numel()
        tensors = {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(state["latent_bias"], d_sae, "latent_bias"),
            "W_dec": _decoder(state, d_in, d_sae, notes, path),
            "b_dec": vector(state["pre_bias"], d_in, "pre_bias"),
        }
        if "activation" not in state:
            raise IncompatibleSAEError(
                f"{path} lacks the 'activation' entry every openai/sparse_autoencoder state dict stores: it is not "
                "one (the RouteSAEs authors' single-layer files look like this and compute a signed TopK)."
            )
        activation = state["activation"]
        act_state = state.get("activation_state_dict") or {}
        training: dict[str, Any] = {"activation": activation, "d_sae": d_sae}
        if activation == "TopK":
            if act_state.get("postact_fn", "ReLU") != "ReLU":
                raise IncompatibleSAEError(
                    f"{path}: TopK with postact_fn {act_state.get('postact_fn')!r} is not supported (only ReLU)."
                )
            k = int(act_state["k"]) if "k" in act_state else None
            if k is None:
                raise CheckpointError(
                    f"{path} lacks activation_state_dict.k for its TopK activation: re-save the state dict."
                )
            training["k"] = k
            architecture = "topk"
            config = {
                "d_in": d_in,
                "d_sae": d_sae,
                "k": k,
                "apply_b_dec_to_input": True,
                "normalize_activations": "layer_norm",
            }
            notes.append(
                "input layer-normalised (mean 0, std 1) before encoding and restored after decoding, as OpenAI's TopK autoencoders do"
            )
        elif activation == "ReLU":
            architecture = "standard"
            config = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True}
        else:
            raise IncompatibleSAEError(f"{path}: activation {activation!r} is not supported (TopK, ReLU).")
        hook, model = _hook_from_path(path, notes)
        sae = build_sae(
            architecture, config, tensors, device=request.device, dtype=request.dtype,
            metadata={"model_name": model, "hook_name": hook}, source=path,
        )  # fmt: skip
        return LoadedSAE(
            sae=sae,
            source_library="openai",
            format=self.name,
            architecture=architecture,
            hook_name=hook,
            model_name=model,
            training=training,
            notes=notes,
            path=str(path),
        )
