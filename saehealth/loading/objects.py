"""SAEs that exist only in memory: a `sae_lens.SAE`, or any `torch.nn.Module` with `encode` and `decode`.

The protocol an SAE object follows (documented in docs/python.md, "From Python"):
- `encode(x)` takes activations (..., d_in) in the module's dtype and returns latents (..., d_sae), dense or
  sparse; `decode(latents)` returns the reconstruction (..., d_in). Both are called under `torch.no_grad()` on
  token chunks, x cast to the module's dtype and on its device (the model's device: put both on one).
- The decoder matrix, for decoder geometry, the logit lens and absorption, is read from `W_dec` (d_sae, d_in),
  else `decoder.weight` (an `nn.Linear(d_sae, d_in)`: d_in × d_sae), else `W_dec` / `decoder.weight` of a
  submodule `sae`; orientation comes from the shapes. The encoder matrix, for the encoder–decoder cosines, from
  `W_enc` (d_in, d_sae) or `encoder.weight`. Without a decoder matrix those metrics are null, with that reason.
- Nothing is copied: the wrapper holds the module itself, so its dtype and device are the ones it runs in, and
  its weights' fingerprint (saehealth.fingerprint) tells a saved result of these weights from another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from saehealth.errors import ConfigError, IncompatibleSAEError
from saehealth.loading.base import LoadedSAE

NO_DECODER = (
    "the SAE object exposes no decoder matrix (W_dec of (d_sae, d_in), or decoder.weight): "
    "add one to measure it (docs/python.md)"
)


def is_sae_object(value: Any) -> bool:
    """True for an in-memory SAE (a module with encode and decode), False for a path."""
    return (
        isinstance(value, torch.nn.Module)
        and callable(getattr(value, "encode", None))
        and callable(getattr(value, "decode", None))
    )


@dataclass
class ObjectSAEConfig:
    """What saehealth reads from a SAELens cfg, for an SAE object that has none."""

    d_in: int
    d_sae: int
    metadata: SimpleNamespace = field(default_factory=SimpleNamespace)


class ModuleSAE(torch.nn.Module):
    """A module with encode/decode as the pass sees an SAE: `cfg` (d_in, d_sae, metadata), `dtype`, `device`,
    `encode`, `decode`, and `W_dec` / `W_enc` where the module has them (None where it does not)."""

    def __init__(self, module: torch.nn.Module, d_in: int, d_sae: int, hook_name: str | None = None):
        super().__init__()
        self.module = module  # registered, so state_dict (and the fingerprint) are the module's own weights
        self.cfg = ObjectSAEConfig(d_in, d_sae, SimpleNamespace(hook_name=hook_name, hook_head_index=None))
        self._W_dec = _matrix(module, ("W_dec", "decoder.weight"), d_sae, d_in)
        self._W_enc = _matrix(module, ("W_enc", "encoder.weight"), d_in, d_sae)

    @property
    def W_dec(self) -> torch.Tensor | None:  # noqa: N802 (SAELens' name)
        return self._W_dec() if self._W_dec else None

    @property
    def W_enc(self) -> torch.Tensor | None:  # noqa: N802
        return self._W_enc() if self._W_enc else None

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.module.parameters()), torch.device("cpu"))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.encode(x.to(self.device, self.dtype))

    def run_time_activation_norm_fn_in(self, x: torch.Tensor) -> torch.Tensor:
        """What the SAE's encoder is given, as SAELens names it: an object normalises inside its own encode."""
        return x

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.module.decode(latents)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _attribute(module: torch.nn.Module, dotted: str) -> Any:
    value: Any = module
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _matrix(module: torch.nn.Module, names: tuple[str, ...], rows: int, cols: int):
    """A getter of the first named matrix found, as (rows, cols) (transposed when stored (cols, rows)), or None.

    A getter, not the tensor: a training loop updates the weights between checks (and may replace them)."""
    for owner in (module, getattr(module, "sae", None)):
        if not isinstance(owner, torch.nn.Module):
            continue
        for name in names:
            value = _attribute(owner, name)
            if not isinstance(value, torch.Tensor) or value.ndim != 2:
                continue
            shape, linear = tuple(value.shape), name.endswith(".weight")
            # A square matrix keeps its name's layout: W_* is (rows, cols), a Linear's weight (out, in) = (cols, rows).
            if rows == cols:
                transposed = linear
            elif shape in ((rows, cols), (cols, rows)):
                transposed = shape == (cols, rows)
            else:
                continue
            if shape == (rows, cols) or shape == (cols, rows):

                def get(owner=owner, name=name, transposed=transposed) -> torch.Tensor:
                    tensor = _attribute(owner, name)
                    return tensor.T if transposed else tensor

                return get
    return None


def sae_of(obj: torch.nn.Module, d_in: int, hook_name: str | None = None):
    """The object as the pass sees an SAE: a sae_lens SAE as it is, any other encode/decode module wrapped."""
    from sae_lens import SAE

    if isinstance(obj, SAE):
        return obj
    if not is_sae_object(obj):
        raise ConfigError(
            f"{type(obj).__name__} is not an SAE: pass a sae_lens SAE or a torch.nn.Module with encode(x) and "
            "decode(latents) (docs/python.md)."
        )
    with torch.no_grad():
        probe = torch.zeros(1, d_in, dtype=_dtype_of(obj), device=_device_of(obj))
        try:
            latents = obj.encode(probe)
        except Exception as exc:  # the module's own error: its input width is not the hook's
            raise IncompatibleSAEError(
                f"{type(obj).__name__}.encode fails on an input of width {d_in} (the hook's): {exc}"
            ) from None
    return ModuleSAE(obj, d_in, int(latents.shape[-1]), hook_name)


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def wrap_sae(
    obj: torch.nn.Module, *, d_in: int, hook: str | None = None, model_name: str | None = None, name: str | None = None
) -> LoadedSAE:
    """An in-memory SAE as a `LoadedSAE`, never copied: a sae_lens SAE keeps its own cfg (its hook, model,
    context and dataset unless `hook` says otherwise); any other module is wrapped in `ModuleSAE`."""
    from sae_lens import SAE

    sae = sae_of(obj, d_in, hook)
    label = name or f"<{type(obj).__name__} object>"
    if isinstance(sae, SAE):
        meta = sae.cfg.metadata
        return LoadedSAE(
            sae=sae,
            source_library="object",
            format="object",
            architecture=sae.cfg.architecture(),
            hook_name=hook or getattr(meta, "hook_name", None),
            output_hook_name=getattr(meta, "hook_name_out", None),
            model_name=model_name or getattr(meta, "model_name", None),
            context_size=getattr(meta, "context_size", None),
            dataset_path=getattr(meta, "dataset_path", None),
            path=label,
        )
    notes = [] if sae.W_dec is not None else [f"decoder geometry, logit lens and absorption not measured: {NO_DECODER}"]
    return LoadedSAE(
        sae=sae,
        source_library="object",
        format="object",
        architecture=type(obj).__name__,
        hook_name=hook,
        model_name=model_name,
        notes=notes,
        path=label,
    )


def decoder_matrix(sae) -> torch.Tensor | None:
    """The SAE's decoder matrix (d_sae, d_in), or None when an SAE object has none."""
    return getattr(sae, "W_dec", None)
