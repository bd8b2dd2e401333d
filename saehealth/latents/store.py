"""`result.latents.safetensors`: the latent examples and logit lens saved beside a result.

Its metadata records the request of the result it belongs to, so a file left over from another evaluation
in the same folder is never shown as this result's latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saehealth.output import atomic_write, separate_tensors

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

    arrays = separate_tensors({**examples.arrays(), **(lens or {})})
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
    window, tokens = _whole_number(metadata.get("window"), MAX_WINDOW), _whole_number(metadata.get("tokens"), 10**15)
    if window is None or tokens is None:
        return None, f"{path.name} records no usable window or token count: re-run the evaluation with --force"
    latents = LatentsFile(
        arrays=arrays, window=window, tokens=tokens, logit_lens_reason=metadata.get("logit_lens") or None
    )
    problem = _layout_problem(latents)
    if problem is not None:
        return (
            None,
            f"{path.name} is not a latents file saehealth wrote ({problem}): re-run the evaluation with --force",
        )
    return latents, None


def check_against_result(latents: LatentsFile, d_sae: int, n_sequences: int, context: int) -> str | None:
    """Why the latents file cannot belong to a result of `d_sae` latents over `n_sequences` sequences of `context`
    tokens (None when it can): every kept firing must name a sequence and a position that was evaluated."""
    if latents.d_sae != d_sae:
        return f"{LATENTS_FILE} holds {latents.d_sae} latents, the result {d_sae}: re-run the evaluation with --force"
    for kind in ("top", "sample"):
        sequence, position = latents.arrays[f"{kind}_sequence"], latents.arrays[f"{kind}_position"]
        kept = sequence >= 0
        if kept.any() and (int(sequence[kept].max()) >= n_sequences or int(position[kept].max()) >= context):
            return (
                f"{LATENTS_FILE} names {kind} examples beyond the {n_sequences} sequences of {context} tokens evaluated: "
                "re-run the evaluation with --force"
            )
    return None


MAX_WINDOW = 4096  # tokens either side of a firing; saehealth keeps 10


def _whole_number(text, limit: int) -> int | None:
    """A metadata value (text) that is a whole number from 0 to `limit`, else None."""
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value <= limit else None


def _layout_problem(latents: LatentsFile) -> str | None:
    """What is wrong with the arrays of a latents file (which may have been edited or forged), None when each
    has the shape, dtype and range that the readers rely on."""
    a = latents.arrays
    counts = a.get("firing_counts")
    if counts is None or counts.dim() != 1 or counts.numel() == 0:
        return "no firing_counts"
    d = counts.shape[0]
    edges, histogram = a.get("activation_histogram_edges"), a.get("activation_histogram")
    shapes = {"activation_mean": (d,), "activation_max": (d,)}
    if edges is None or edges.dim() != 1 or edges.numel() < 2 or histogram is None:
        return "no activation histogram"
    shapes["activation_histogram"] = (d, edges.numel() - 1)
    for kind in ("top", "sample"):
        values = a.get(f"{kind}_values")
        if values is None or values.dim() != 2 or values.shape[0] != d:
            return f"no {kind}_values of {d} rows"
        n = values.shape[1]
        shapes |= {f"{kind}_sequence": (d, n), f"{kind}_position": (d, n)}
        shapes[f"{kind}_window"] = (d, n, 2 * latents.window + 1)
    for side in ("top", "bottom"):
        ids = a.get(f"logit_lens_{side}_ids")
        if ids is not None:
            shapes[f"logit_lens_{side}_ids"] = (d, ids.shape[-1])
            shapes[f"logit_lens_{side}_values"] = (d, ids.shape[-1])
    for name, shape in shapes.items():
        tensor = a.get(name)
        if tensor is None or tuple(tensor.shape) != shape:
            return f"{name} is not of shape {shape}"
    integers = [
        "firing_counts",
        "activation_histogram",
        *(n for n in shapes if n.endswith(("_sequence", "_position", "_ids"))),
    ]
    for name in integers:
        if a[name].dtype.is_floating_point or a[name].dtype.is_complex or a[name].dtype == torch.bool:
            return f"{name} is not whole numbers"
    for name in set(shapes) - set(integers) | {"activation_histogram_edges"}:
        if not a[name].dtype.is_floating_point:
            return f"{name} is not numbers"
    if (counts < 0).any() or (a["activation_histogram"] < 0).any():
        return "negative counts"
    for kind in ("top", "sample"):
        sequence, position = a[f"{kind}_sequence"], a[f"{kind}_position"]
        if (sequence < -1).any() or (position[sequence >= 0] < 0).any():
            return f"negative {kind} positions"
    for side in ("top", "bottom"):
        ids = a.get(f"logit_lens_{side}_ids")
        if ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2**31):
            return "token ids out of range"
    return None


def _canonical(request: dict) -> str:
    return json.dumps(request, sort_keys=True, default=str)
