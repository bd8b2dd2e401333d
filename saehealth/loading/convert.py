"""Building a SAELens SAE from an architecture, its config fields and a converted state dict.

Adapters convert the source library's tensors (orientation, folded normalisation, thresholds) in float64 or
the stored dtype and hand them here; this module checks them, builds the SAE on the meta device (no second
copy of the weights), assigns the tensors, and moves it to the requested device and dtype in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_class
from sae_lens.saes.sae import SAEMetadata

from saehealth.loading.files import DTYPES, check_finite, require_float, state_dict_error


def build_sae(
    architecture: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    device: str,
    dtype: str,
    metadata: dict[str, Any],
    source: Path | str,
) -> SAE:
    """A SAELens SAE of `architecture` (a SAELens registry name) holding `state`, ready for inference.

    `config` holds the architecture's config fields (d_in, d_sae, k, apply_b_dec_to_input, ...);
    `metadata` the SAELens metadata (model_name, hook_name, context_size, dataset_path, hook_name_out).
    """
    require_float(state, source)
    check_finite(state, source)
    sae_cls, cfg_cls = get_sae_class(architecture)
    cfg = cfg_cls(**{**config, "device": "meta", "dtype": dtype})
    cfg.metadata = SAEMetadata(**{k: v for k, v in metadata.items() if v is not None})
    # Build on the meta device and assign the converted tensors: no throw-away random initialisation.
    sae = sae_cls(cfg)
    target = DTYPES[dtype]
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    try:
        sae.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise state_dict_error(exc, source, f"a SAELens {architecture} SAE") from None
    sae.cfg.device = device
    sae = sae.to(device=device, dtype=target)
    sae.eval()
    return sae
