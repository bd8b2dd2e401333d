"""EleutherAI sparsify: one hookpoint folder (cfg.json + sae.safetensors) or a run folder of many.

sparsify's forward (`SparseCoder.encode`/`decode`): pre = relu(encoder(x - b_dec)) (no `- b_dec` for
transcoders), keep the top-k latents (or the maximum of each of k groups for `activation="groupmax"`), decode
with W_dec and b_dec, and add `x @ W_skip.T` when `skip_connection` is on. Plain TopK SAEs become a stock
SAELens `TopKSAE`; groupmax, skip connections and transcoders use the classes in `architectures.py`.

A run folder (written by `sparsify`'s trainer) holds `config.json` (the run: model, dataset, ctx_len, lr, ...)
and one folder per hookpoint (`layers.3`, `h.0.mlp`, or `layers.3/seed0` with several seeds). Hookpoints are
mapped to TransformerLens hooks by `hooks.map_hf_module`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import saehealth.loading.architectures  # noqa: F401  (registers the sparsify SAELens classes)
from saehealth.errors import CheckpointError, IncompatibleSAEError
from saehealth.loading.base import Adapter, LoadedSAE, LoadRequest, register_adapter
from saehealth.loading.convert import build_sae
from saehealth.loading.detect import select_members
from saehealth.loading.files import (
    POSITIVE_INT,
    TEXT,
    check_fields,
    load_torch_file,
    natural_key,
    orient,
    read_json,
    read_safetensors,
    require_tensors,
    vector,
)
from saehealth.loading.hooks import map_hf_module

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
RUN_CFG = "config.json"
_SEED = re.compile(r"seed\d+")
# Run-config entries worth keeping as training facts.
RUN_KEYS = (
    "lr", "batch_size", "grad_acc_steps", "micro_acc_steps", "loss_fn", "optimizer", "lr_warmup_steps",
    "auxk_alpha", "dead_feature_threshold", "k_decay_steps", "ctx_len", "max_examples", "init_seeds",
    "layer_stride", "run_name", "split", "finetune", "exclude_tokens",
)  # fmt: skip


def _is_hookpoint_folder(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def _members(path: Path) -> list[str]:
    """Hookpoint folders inside a run folder, as relative names (`layers.3`, `layers.3/seed0`), naturally sorted."""
    found = []
    for child in path.iterdir():
        if not child.is_dir() or child.name == "best":
            continue
        if _is_hookpoint_folder(child):
            found.append(child.name)
        else:
            found += [
                f"{child.name}/{g.name}" for g in child.iterdir() if _SEED.fullmatch(g.name) and _is_hookpoint_folder(g)
            ]
    return sorted(found, key=natural_key)


def _hookpoint_of(member: str) -> str:
    return member.split("/")[0]


def _run_config(folder: Path) -> tuple[dict[str, Any], Path | None]:
    """The run's config.json (next to the hookpoint folder, or above a seed folder), if any."""
    for candidate in (folder.parent, folder.parent.parent):
        run_cfg = candidate / RUN_CFG
        if run_cfg.is_file():
            return read_json(run_cfg), candidate
    return {}, None


@register_adapter
class SparsifyAdapter(Adapter):
    """An EleutherAI sparsify hookpoint folder or run folder."""

    name = "sparsify"
    priority = 30
    source_library = "sparsify"
    expected = f"sparsify ({CFG} + {WEIGHTS}, or a run folder of such hookpoint folders)"

    def detect(self, path: Path) -> bool:
        if _is_hookpoint_folder(path):
            return True
        return path.is_dir() and not (path / "sae_weights.safetensors").exists() and bool(_members(path))

    def load(self, path: Path, request: LoadRequest) -> LoadedSAE | list[LoadedSAE]:
        if _is_hookpoint_folder(path):
            return self._load_one(path, request)
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is not a folder: a sparsify checkpoint is a folder with {CFG} and {WEIGHTS}."
            )
        members = _members(path)
        if not members:
            raise CheckpointError(
                f"{path} holds no sparsify hookpoint folder: each needs {CFG} and {WEIGHTS} "
                "(pass the run folder or one hookpoint folder)."
            )
        hooks = {}
        for member in members:
            cfg = read_json(path / member / CFG)
            hooks[member] = map_hf_module(_hookpoint_of(member), transcode=bool(cfg.get("transcode"))).hook_name
        chosen, single = select_members(members, hooks, request, path)
        loaded = [self._load_one(path / member, request, hookpoint=_hookpoint_of(member)) for member in chosen]
        return loaded[0] if single else loaded

    def _load_one(self, folder: Path, request: LoadRequest, hookpoint: str | None = None) -> LoadedSAE:
        cfg = read_json(folder / CFG, required=("d_in",))
        check_fields(cfg, {"d_in": POSITIVE_INT, "k": POSITIVE_INT, "activation": TEXT}, folder / CFG)
        tensors = read_safetensors(folder / WEIGHTS)
        source = folder / WEIGHTS
        require_tensors(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), source)
        if cfg.get("signed"):
            raise IncompatibleSAEError(f"{folder / CFG}: signed sparsify SAEs (signed=true) are not supported.")
        notes: list[str] = []
        transcode = bool(cfg.get("transcode", False))
        activation = str(cfg.get("activation", "topk"))
        if activation not in ("topk", "groupmax"):
            raise IncompatibleSAEError(
                f"{folder / CFG}: unknown sparsify activation {activation!r} (expected topk or groupmax)."
            )
        skip = "W_skip" in tensors
        d_in = int(cfg["d_in"])
        b_enc = tensors["encoder.bias"].reshape(-1)
        d_sae = b_enc.numel()
        b_dec = tensors["b_dec"].reshape(-1)
        d_out = b_dec.numel()
        if not transcode and d_out != d_in:
            raise IncompatibleSAEError(f"{source}: b_dec has {d_out} values but d_in is {d_in}.")
        k = int(cfg.get("k", 32))
        if activation == "groupmax" and d_sae % k:
            raise IncompatibleSAEError(f"{folder / CFG}: groupmax needs d_sae ({d_sae}) divisible by k ({k}).")
        stored = str(tensors["encoder.weight"].dtype).removeprefix("torch.")
        state = {
            "W_enc": orient(tensors["encoder.weight"], d_in, d_sae, "encoder.weight", notes, "(d_sae, d_in)"),
            "b_enc": vector(b_enc, d_sae, "encoder.bias"),
            "W_dec": orient(tensors["W_dec"], d_sae, d_out, "W_dec", notes, "(d_sae, d_in)"),
            "b_dec": b_dec,
        }
        if skip:
            state["W_skip"] = orient(tensors["W_skip"], d_out, d_in, "W_skip", notes, "(d_out, d_in)")
        if stored != request.dtype:
            notes.append(f"weights stored as {stored}, loaded as {request.dtype}")

        hookpoint = hookpoint or folder.name
        mapping = map_hf_module(hookpoint, transcode=transcode)
        if mapping.note:
            notes.append(mapping.note)
        if transcode:
            architecture = "sparsify_transcoder"
            config = {"d_in": d_in, "d_sae": d_sae, "d_out": d_out, "k": k, "activation": activation,
                      "skip_connection": skip, "apply_b_dec_to_input": False}  # fmt: skip
        elif activation == "groupmax" or skip:
            architecture = "sparsify"
            config = {"d_in": d_in, "d_sae": d_sae, "k": k, "activation": activation, "skip_connection": skip,
                      "apply_b_dec_to_input": True}  # fmt: skip
        else:
            architecture = "topk"
            config = {"d_in": d_in, "d_sae": d_sae, "k": k, "apply_b_dec_to_input": True}
        if skip:
            notes.append("linear skip connection: decode() adds W_skip @ x for the x of the preceding encode()")

        run_cfg, run_folder = _run_config(folder)
        metadata = {
            "model_name": run_cfg.get("model"),
            "hook_name": mapping.hook_name,
            "hook_name_out": mapping.output_hook_name,
            "context_size": run_cfg.get("ctx_len"),
            "dataset_path": run_cfg.get("dataset"),
            "hf_hook_name": hookpoint,
        }
        sae = build_sae(
            architecture, config, state, device=request.device, dtype=request.dtype, metadata=metadata, source=source
        )
        training = {key: value for key, value in cfg.items() if key != "d_in" and value is not None}
        training.update({"d_in": d_in, "d_sae": d_sae, "hookpoint": hookpoint})
        training.update({key: run_cfg[key] for key in RUN_KEYS if run_cfg.get(key) is not None})
        if run_folder is not None and (run_folder / "state.pt").is_file():
            state_pt = load_torch_file(run_folder / "state.pt")
            if isinstance(state_pt, dict) and isinstance(state_pt.get("global_step"), int):
                training["global_step"] = state_pt["global_step"]
        label = activation + ("_skip" if skip else "") + ("_transcoder" if transcode else "")
        return LoadedSAE(
            sae=sae,
            source_library="sparsify",
            format=self.name,
            architecture=label,
            hook_name=mapping.hook_name,
            output_hook_name=mapping.output_hook_name,
            model_name=run_cfg.get("model"),
            context_size=run_cfg.get("ctx_len"),
            dataset_path=run_cfg.get("dataset"),
            training=training,
            notes=notes,
            path=str(folder),
        )
