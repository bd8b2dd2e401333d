"""minSAE (cloneofsimo/minSAE): `best_sae.pt` / `final_sae.pt` holding `model_state_dict` and `config`.

minSAE's `SparseReLUAutoencoder` computes h = relu(encoder(x)) and x_hat = decoder(h), both `nn.Linear` with
biases and no decoder-bias subtraction on the input; `SparseTopKAutoEncoder` keeps the `topk` largest of h.
So they are a SAELens `StandardSAE` / `TopKSAE` with `apply_b_dec_to_input=False` and b_dec = decoder.bias.
minSAE hooks the output of `layers.{layer_idx}.mlp.down_proj` (the MLP output: `blocks.N.hook_mlp_out`) and
always caches FineWeb (`HuggingFaceFW/fineweb`, sample-10BT) in 2048-token contexts; the file records the model
and layer, and the rest comes from that fixed setup (a note says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.files import load_torch_file, orient, peek_torch_file, require_tensors, vector

FILES = ("best_sae.pt", "final_sae.pt")
_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
_FACT_KEYS = (
    "layer_idx", "d_hidden", "expansion_factor", "learning_rate", "batch_size", "shard_size", "l1_coef", "topk",
    "num_epochs", "num_train_samples", "num_val_samples", "sae_type",
)  # fmt: skip


def _is_minsae(obj: Any) -> bool:
    return (
        isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict) and isinstance(obj.get("config"), dict)
    )


@register_adapter
class MinSAEAdapter(Adapter):
    """A minSAE checkpoint file, or the cache folder holding best_sae.pt / final_sae.pt."""

    name = "minsae"
    source_library = "minsae"
    expected = "minSAE (best_sae.pt / final_sae.pt)"
    priority = 65

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return any((path / name).is_file() for name in FILES)
        return path.suffix in (".pt", ".pth") and (path.name in FILES or _is_minsae(peek_torch_file(path)))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE:
        notes: list[str] = []
        if path.is_dir():
            present = [name for name in FILES if (path / name).is_file()]
            if not present:
                raise CheckpointError(f"{path} has neither {' nor '.join(FILES)}: pass a minSAE checkpoint file.")
            if len(present) == 2:
                notes.append("best_sae.pt chosen over final_sae.pt (pass the file to pick final_sae.pt)")
            path = path / present[0]
        checkpoint = load_torch_file(path)
        if not _is_minsae(checkpoint):
            raise CheckpointError(f"{path} has no model_state_dict and config: it is not a minSAE checkpoint.")
        state, config = checkpoint["model_state_dict"], checkpoint["config"]
        require_tensors(state, _KEYS, path)
        d_in, d_sae = state["decoder.bias"].numel(), state["encoder.bias"].numel()
        tensors = {
            "W_enc": orient(state["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_hidden, d_input)"),
            "b_enc": vector(state["encoder.bias"], d_sae, "encoder.bias"),
            "W_dec": orient(state["decoder.weight"], d_sae, d_in, "decoder.weight", notes, "(d_input, d_hidden)"),
            "b_dec": vector(state["decoder.bias"], d_in, "decoder.bias"),
        }
        sae_type = str(config.get("sae_type", "relu"))
        if sae_type == "topk":
            architecture = "topk"
            fields: dict[str, Any] = {
                "d_in": d_in,
                "d_sae": d_sae,
                "k": int(config.get("topk", 100)),
                "apply_b_dec_to_input": False,
            }
        elif sae_type == "relu":
            architecture = "standard"
            fields = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": False}
        else:
            raise IncompatibleSAEError(f"{path}: minSAE sae_type {sae_type!r} is not supported (relu, topk).")
        layer = config.get("layer_idx")
        hook = f"blocks.{int(layer)}.hook_mlp_out" if layer is not None else None
        notes.append(
            f"hook mapped from layers.{layer}.mlp.down_proj to {hook}"
            if hook
            else "config names no layer_idx: pass --hook"
        )
        notes.append("context size 2048 and dataset HuggingFaceFW/fineweb come from minSAE's fixed caching setup")
        metadata = {"model_name": config.get("model_name"), "hook_name": hook, "context_size": 2048,
                    "dataset_path": "HuggingFaceFW/fineweb"}  # fmt: skip
        sae = build_sae(
            architecture, fields, tensors, device=request.device, dtype=request.dtype, metadata=metadata, source=path
        )
        training = {key: config[key] for key in _FACT_KEYS if config.get(key) is not None}
        for key in ("epoch", "validation_loss"):
            value = checkpoint.get(key)
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, (int, float)):
                training[key] = value
        return LoadedSAE(
            sae=sae,
            source_library="minsae",
            format=self.name,
            architecture=architecture,
            hook_name=hook,
            model_name=config.get("model_name"),
            context_size=2048,
            dataset_path="HuggingFaceFW/fineweb",
            training=training,
            notes=notes,
            path=str(path),
        )
