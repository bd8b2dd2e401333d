"""Llama Scope (OpenMOSS Language-Model-SAEs): `hyperparams.json` + `checkpoints/final.safetensors`.

The library's forward, for `norm_activation="dataset-wise"`:

    s_in = sqrt(d_model) / dataset_average_activation_norm["in"]       (s_out likewise with "out")
    pre = encoder((x * s_in) - b_dec)     # "- b_dec" only with apply_decoder_bias_to_pre_encoder
    f = pre * (pre * ||W_dec[:, i]|| > jump_relu_threshold)            # "* ||W_dec||" only with sparsity_include_decoder_norm
    x_hat = (decoder(f)) / s_out                                       # decoder bias only with use_decoder_bias

Every step is linear or a per-latent comparison, so it folds exactly into a SAELens `JumpReLUSAE` on raw
activations (`apply_b_dec_to_input=False`): W_enc * s_in, b_enc - b_dec W_enc, a per-latent threshold
jump_relu_threshold / ||W_dec_i||, and W_dec, b_dec divided by s_out. The latents are the library's `f`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import orient, read_json, read_safetensors, require_tensors, vector

HYPERPARAMS = "hyperparams.json"
WEIGHT_FILES = ("checkpoints/final.safetensors", "sae_weights.safetensors", "checkpoints/pruned.safetensors")
_FACT_KEYS = (
    "d_model", "d_sae", "expansion_factor", "act_fn", "jump_relu_threshold", "top_k", "norm_activation",
    "sparsity_include_decoder_norm", "use_decoder_bias", "apply_decoder_bias_to_pre_encoder", "lr", "l1_coefficient",
    "total_training_tokens", "train_batch_size", "lp", "dataset_average_activation_norm",
)  # fmt: skip


def _weights(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


@register_adapter
class LlamaScopeAdapter(Adapter):
    """A Llama Scope SAE folder."""

    name = "llama_scope"
    source_library = "llama_scope"
    expected = f"Llama Scope ({HYPERPARAMS} + checkpoints/final.safetensors)"
    priority = 60

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / HYPERPARAMS).is_file() and _weights(path) is not None

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        if not (path / HYPERPARAMS).is_file():
            raise CheckpointError(
                f"{path} has no {HYPERPARAMS}: a Llama Scope SAE folder holds it and checkpoints/final.safetensors."
            )
        hp = read_json(path / HYPERPARAMS, required=("d_model", "hook_point_in"))
        weights = _weights(path)
        if weights is None:
            raise CheckpointError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}.")
        tensors = read_safetensors(weights)
        require_tensors(tensors, ("encoder.weight", "encoder.bias", "decoder.weight"), weights)
        notes: list[str] = []
        d_in = int(hp["d_model"])
        d_sae = tensors["encoder.bias"].numel()
        # Fold in float64: the factors can be large and the thresholds are compared after division.
        W_enc = orient(tensors["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_model)").double()
        b_enc = vector(tensors["encoder.bias"], d_sae, "encoder.bias").double()
        W_dec = orient(tensors["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_model, d_sae)").double()
        use_bias = bool(hp.get("use_decoder_bias", "decoder.bias" in tensors)) and "decoder.bias" in tensors
        b_dec = (
            vector(tensors["decoder.bias"], d_in, "decoder.bias").double()
            if use_bias
            else torch.zeros(d_in, dtype=torch.float64)
        )

        for key, value in tensors.items():  # newer versions keep the norms in the weights file
            if key.startswith("dataset_average_activation_norm."):
                hook = key.split(".", 1)[1]
                side = "in" if hook == hp["hook_point_in"] else "out"
                hp.setdefault("dataset_average_activation_norm", {}).setdefault(side, float(value))
        s_in, s_out = self._norm_factors(hp, d_in, path, notes)
        if use_bias and hp.get("apply_decoder_bias_to_pre_encoder", False):
            b_enc = b_enc - b_dec @ W_enc
        act_fn = str(hp.get("act_fn", "jumprelu")).lower()
        if act_fn == "jumprelu":
            base = float(hp.get("jump_relu_threshold", 0.0))
            if "log_jumprelu_threshold" in tensors:
                threshold = vector(tensors["log_jumprelu_threshold"], d_sae, "log_jumprelu_threshold").double().exp()
            else:
                threshold = torch.full((d_sae,), base, dtype=torch.float64)
        elif act_fn == "relu":
            threshold = torch.zeros(d_sae, dtype=torch.float64)
        else:
            raise IncompatibleSAEError(
                f"{path / HYPERPARAMS}: Llama Scope act_fn {act_fn!r} is not supported (jumprelu, relu)."
            )
        if bool((threshold < 0).any()):
            raise IncompatibleSAEError(f"{path / HYPERPARAMS}: negative JumpReLU thresholds are not supported.")
        if hp.get("sparsity_include_decoder_norm", True):
            # pre * ||W_dec_i|| > t  <=>  pre > t / ||W_dec_i||
            threshold = threshold / W_dec.norm(dim=-1)
            notes.append("threshold divided by each latent's decoder norm (sparsity_include_decoder_norm)")
        state = {
            "W_enc": W_enc * s_in,
            "b_enc": b_enc,
            "W_dec": W_dec / s_out,
            "b_dec": b_dec / s_out,
            "threshold": threshold,
        }
        hook_in, hook_out = hp["hook_point_in"], hp.get("hook_point_out", hp["hook_point_in"])
        transcoder = hook_out != hook_in
        metadata = {
            "model_name": hp.get("model_name"),
            "hook_name": hook_in,
            "hook_name_out": hook_out if transcoder else None,
            "context_size": hp.get("context_size"),
            "dataset_path": hp.get("dataset_path"),
        }
        architecture = "jumprelu_transcoder" if transcoder else "jumprelu"
        config = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False}
        if transcoder:
            config["d_out"] = d_in
        sae = build_sae(
            architecture, config, state, device=request.device, dtype=request.dtype, metadata=metadata, source=weights
        )
        training = {key: hp[key] for key in _FACT_KEYS if hp.get(key) is not None}
        return LoadedSAE(
            sae=sae,
            source_library="llama_scope",
            format=self.name,
            architecture=architecture,
            hook_name=hook_in,
            output_hook_name=hook_out if transcoder else None,
            model_name=hp.get("model_name"),
            context_size=hp.get("context_size"),
            dataset_path=hp.get("dataset_path"),
            training=training,
            notes=notes,
            path=str(path),
        )

    @staticmethod
    def _norm_factors(hp: dict, d_in: int, path: Path, notes: list[str]) -> tuple[float, float]:
        mode = hp.get("norm_activation", "dataset-wise")
        if mode == "inference":
            return 1.0, 1.0
        if mode != "dataset-wise":
            raise IncompatibleSAEError(
                f"{path / HYPERPARAMS}: norm_activation {mode!r} depends on each batch and cannot be folded "
                "into a fixed SAE; only dataset-wise and inference are supported."
            )
        norms = hp.get("dataset_average_activation_norm")
        if not isinstance(norms, dict) or "in" not in norms:
            raise CheckpointError(
                f"{path / HYPERPARAMS} lacks dataset_average_activation_norm.in, needed for dataset-wise "
                "normalisation: restore the original file."
            )
        s_in = math.sqrt(d_in) / float(norms["in"])
        s_out = math.sqrt(d_in) / float(norms.get("out", norms["in"]))
        notes.append(f"dataset-wise input scaling sqrt(d_model)/{float(norms['in']):.6g} folded into the weights")
        return s_in, s_out
