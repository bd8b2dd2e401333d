"""`result.latents.safetensors`: the latent examples and logit lens saved beside a result.

Its metadata records the request of the result it belongs to, so a file left over from another evaluation
in the same folder is never shown as this result's latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saehealth.output import atomic_write

LATENTS_FILE = "result.latents.safetensors"
FORMAT_VERSION = "1"


@dataclass
class LatentsFile:
    """The arrays of a latents file (see `LatentExamples.arrays` and `logit_lens`) and what it records."""

    arrays: dict[str, torch.Tensor]
    window: int
    tokens: int  # T: unmasked positions the examples were collected over
    logit_lens_reason: str | None = None  # why there is no logit lens (None when there is one)
    info: dict = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.arrays["firing_counts"].shape[0])

    @property
    def has_logit_lens(self) -> bool:
        return "logit_lens_top_ids" in self.arrays


def write_latents(folder: Path, examples, lens: dict | None, lens_reason: str | None, request: dict) -> Path | None:
    """Write the latents file for `examples` (a `LatentExamples`) and the logit lens arrays into `folder`;
    with `examples` None (collection off), remove a stale file instead. Returns the path written, or None."""
    path = Path(folder) / LATENTS_FILE
    if examples is None:
        path.unlink(missing_ok=True)
        return None
    from safetensors.torch import save_file

    arrays = {name: tensor.contiguous() for name, tensor in {**examples.arrays(), **(lens or {})}.items()}
    metadata = {
        "format": FORMAT_VERSION,
        "request": _canonical(request),
        "window": str(examples.radius),
        "tokens": str(examples.tokens),
        "logit_lens": lens_reason or "",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=metadata))
    return path


def load_latents(folder: Path, request: dict | None = None) -> tuple[LatentsFile | None, str | None]:
    """(the latents file in `folder`, None), or (None, why there is none). With `request`, a file written
    for another request (another evaluation in the same folder) is not returned."""
    path = Path(folder) / LATENTS_FILE
    if not path.is_file():
        reason = f"this result has no {LATENTS_FILE} (evaluated with --examples 0, or by a saehealth that did not collect them)"
        return None, reason
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # a truncated or foreign file: say so rather than fail the report
        return None, f"{path.name} could not be read ({type(exc).__name__}): re-run the evaluation with --force"
    if metadata.get("format") != FORMAT_VERSION:
        return (
            None,
            f"{path.name} has format {metadata.get('format')!r}, this saehealth reads {FORMAT_VERSION}: re-run with --force",
        )
    if request is not None and metadata.get("request") != _canonical(request):
        return None, f"{path.name} belongs to another evaluation in this folder: re-run with --force"
    latents = LatentsFile(
        arrays=arrays,
        window=int(metadata.get("window", 0)),
        tokens=int(metadata.get("tokens", 0)),
        logit_lens_reason=metadata.get("logit_lens") or None,
    )
    return latents, None


def _canonical(request: dict) -> str:
    return json.dumps(request, sort_keys=True, default=str)
