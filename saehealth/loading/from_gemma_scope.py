"""Gemma Scope: `params.npz` with W_enc, W_dec, b_enc, b_dec and a per-latent JumpReLU threshold.

The documented forward: pre = x @ W_enc + b_enc; f = (pre > threshold) * relu(pre); x_hat = f @ W_dec + b_dec
(no b_dec subtraction on the input): a stock SAELens `JumpReLUSAE` with `apply_b_dec_to_input=False`, or a
`JumpReLUTranscoder` for the Gemma Scope transcoders. The file says nothing about its hook or model; the
published folder names do (`gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz`), so they are
read from the path when present, and otherwise the hook is left unset (pass --hook).
"""

from __future__ import annotations

import re
from pathlib import Path

from saehealth.errors import CheckpointError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import orient, read_npz, require_tensors, vector

PARAMS = "params.npz"
_RELEASE = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att|transcoders)\w*")
_LAYER = re.compile(r"layer_(\d+)")
_L0 = re.compile(r"average_l0_(\d+)")
_WIDTH = re.compile(r"width_(\w+)")
_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _params_file(path: Path) -> Path | None:
    if path.is_dir():
        return path / PARAMS if (path / PARAMS).is_file() else None
    return path if path.suffix == ".npz" else None


@register_adapter
class GemmaScopeAdapter(Adapter):
    """A Gemma Scope params.npz (or its folder)."""

    name = "gemma_scope"
    source_library = "gemma_scope"
    expected = f"Gemma Scope ({PARAMS})"
    priority = 50

    def detect(self, path: Path) -> bool:
        return _params_file(path) is not None

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        params = _params_file(path)
        if params is None:
            raise CheckpointError(f"{path} has no {PARAMS}: a Gemma Scope SAE is a params.npz file.")
        tensors = read_npz(params)
        require_tensors(tensors, _KEYS, params)
        d_in, d_sae = tensors["b_dec"].numel(), tensors["b_enc"].numel()
        notes: list[str] = []
        state = {
            "W_enc": orient(tensors["W_enc"], d_in, d_sae, "W_enc", notes, "(d_in, d_sae)"),
            "b_enc": vector(tensors["b_enc"], d_sae, "b_enc"),
            "W_dec": orient(tensors["W_dec"], d_sae, d_in, "W_dec", notes, "(d_sae, d_in)"),
            "b_dec": vector(tensors["b_dec"], d_in, "b_dec"),
            "threshold": vector(tensors["threshold"], d_sae, "threshold"),
        }
        text = "/".join(params.resolve().parts)
        release, layer = _RELEASE.search(text), _LAYER.search(text)
        model = hook = out_hook = None
        transcoder = False
        if release:
            size, variant, site = release.groups()
            model = f"gemma-2-{size}" + ("-it" if variant == "it" else "")
            transcoder = site == "transcoders"
            if layer:
                n = int(layer.group(1))
                hook, out_hook = {
                    "res": (f"blocks.{n}.hook_resid_post", None),
                    "mlp": (f"blocks.{n}.hook_mlp_out", None),
                    "att": (f"blocks.{n}.attn.hook_z", None),
                    "transcoders": (f"blocks.{n}.ln2.hook_normalized", f"blocks.{n}.hook_mlp_out"),
                }[site]
                notes.append(f"hook and model read from the path ({release.group(0)}, layer_{n})")
        if hook is None:
            notes.append("params.npz does not name its hook or model, nor does its path: pass --hook (and --model)")
        if hook and hook.endswith("attn.hook_z"):
            notes.append("attention SAE on hook_z: inputs are the heads' outputs flattened to n_heads * d_head")
        config: dict = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False}
        if hook and hook.endswith("hook_z"):
            config["reshape_activations"] = "hook_z"
        architecture = "jumprelu"
        if transcoder:
            architecture = "jumprelu_transcoder"
            config = {"d_in": d_in, "d_sae": d_sae, "d_out": d_in, "apply_b_dec_to_input": False}
        metadata = {"model_name": model, "hook_name": hook, "hook_name_out": out_hook}
        sae = build_sae(
            architecture, config, state, device=request.device, dtype=request.dtype, metadata=metadata, source=params
        )
        training = {"d_sae": d_sae}
        for key, pattern in (("average_l0", _L0), ("width", _WIDTH)):
            match = pattern.search(text)
            if match:
                training[key] = int(match.group(1)) if match.group(1).isdigit() else match.group(1)
        return LoadedSAE(
            sae=sae,
            source_library="gemma_scope",
            format=self.name,
            architecture=architecture,
            hook_name=hook,
            output_hook_name=out_hook,
            model_name=model,
            training=training,
            notes=notes,
            path=str(params),
        )
