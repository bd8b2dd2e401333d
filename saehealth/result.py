"""The evaluation result: one typed object per SAE, saved as JSON plus a per-latent companion file.

Layout (../shared/METRICS.md, "Result file"): top-level `schema_version`, `sae`, `eval`, `metrics`,
`verdicts`, `provenance`, `timing`, plus `uncertainty` (standard errors beside the values),
`not_measured` (why a metric is null) and `notes`. Per-latent arrays live in `<stem>.details.safetensors`
next to the JSON, never in it. Both files are written to a temporary name and renamed, so a crash never
leaves a half-written result.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saehealth.errors import SaeHealthError

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
DETAILS_FILE = "result.details.safetensors"

# Every metric key of the contract, in report order. A metric not measured is None.
RECONSTRUCTION_KEYS = ("explained_variance", "fvu", "mse", "cossim", "l2_ratio", "relative_reconstruction_bias")
DOWNSTREAM_KEYS = (
    "ce_loss_clean",
    "ce_loss_with_sae",
    "ce_loss_zero_ablation",
    "delta_ce",
    "loss_recovered",
    "kl_div_with_sae",
    "kl_div_zero_ablation",
    "kl_div_score",
)
SPARSITY_KEYS = (
    "l0",
    "l1",
    "dead_features",
    "dead_fraction",
    "dense_features",
    "dense_fraction",
    "dense_features_1pct",
)
GEOMETRY_KEYS = ("decoder_redundancy", "near_duplicate_latents")
ABSORPTION_KEYS = (
    "absorption_fraction",
    "full_absorption_rate",
    "mean_num_split_features",
    "absorption_letters_scored",
)
METRIC_KEYS = RECONSTRUCTION_KEYS + DOWNSTREAM_KEYS + SPARSITY_KEYS + GEOMETRY_KEYS + ABSORPTION_KEYS


@dataclass
class SAEInfo:
    """What was evaluated: where it came from and what it is."""

    path: str
    source_library: str
    architecture: str
    d_in: int
    d_sae: int
    hook_name: str  # where the SAE reads its input
    model_name: str | None
    # What the checkpoint records about its training (tokens, lr, l1 coefficient, k, normalisation...).
    training: dict = field(default_factory=dict)
    # Transcoders only: the hook whose activation the decoder output replaces (and is scored against).
    output_hook_name: str | None = None
    # SAEs of one attention head (SAELens `hook_head_index`): the head read and replaced at hook_name.
    hook_head_index: int | None = None

    @property
    def where(self) -> str:
        """The hook, with its head when the SAE reads one head."""
        return self.hook_name if self.hook_head_index is None else f"{self.hook_name} (head {self.hook_head_index})"


@dataclass
class EvalSettings:
    """How it was evaluated."""

    model: str
    dataset: str
    split: str
    n_tokens: int  # tokens run through the model (N_seq x ctx)
    tokens_scored: int  # T: unmasked positions that enter every average
    context_length: int
    batch_size: int
    seed: int
    mask_special_tokens: bool
    n_sequences: int
    # The absorption probe schedule (converged | saebench-0.6); results saved before it existed used neither.
    absorption_probes: str | None = None


@dataclass
class Provenance:
    saehealth: str
    sae_lens: str
    transformer_lens: str
    torch: str
    device: str
    dtype: str
    started_at: str
    duration_s: float


@dataclass
class EvalResult:
    """One SAE's evaluation. `metrics` holds every key of METRIC_KEYS (None when not measured)."""

    sae: SAEInfo
    eval: EvalSettings
    metrics: dict[str, float | int | None]
    uncertainty: dict[str, float]
    not_measured: dict[str, str]
    provenance: Provenance
    timing: dict[str, float]
    verdicts: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The options that decided the numbers; a saved result is reused only for the same request.
    request: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SaeHealthError(
                f"Result file has schema_version {version!r}, this saehealth reads {SCHEMA_VERSION}: "
                "re-run the evaluation with --force."
            )
        return cls(
            sae=SAEInfo(**data["sae"]),
            eval=EvalSettings(**data["eval"]),
            metrics=data["metrics"],
            uncertainty=data.get("uncertainty", {}),
            not_measured=data.get("not_measured", {}),
            provenance=Provenance(**data["provenance"]),
            timing=data.get("timing", {}),
            verdicts=data.get("verdicts", {}),
            notes=data.get("notes", []),
            request=data.get("request", {}),
        )

    def save(self, folder: Path, details: dict | None = None) -> Path:
        """Write result.json (and the per-latent companion) into `folder` atomically; return the JSON path."""
        folder.mkdir(parents=True, exist_ok=True)
        if details:
            from safetensors.torch import save_file

            _atomic_write(folder / DETAILS_FILE, lambda tmp: save_file(details, str(tmp)))
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        path = folder / RESULT_FILE
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path


def load_result(path: Path) -> EvalResult:
    """Read a result.json (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    if not path.is_file():
        raise SaeHealthError(f"No result file at {path}: run `saehealth eval` first or check the path.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SaeHealthError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): re-run the evaluation."
        ) from exc
    try:
        return EvalResult.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise SaeHealthError(f"{path} is not a saehealth result file (missing or unexpected field {exc}).") from exc


def load_details(result_path: Path) -> dict:
    """The per-latent arrays saved beside a result.json (empty dict when there are none)."""
    folder = Path(result_path)
    folder = folder if folder.is_dir() else folder.parent
    details = folder / DETAILS_FILE
    if not details.is_file():
        return {}
    from safetensors.torch import load_file

    return load_file(str(details))


def _atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary file beside `path`, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
