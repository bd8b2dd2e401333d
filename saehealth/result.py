"""The evaluation result: one typed object per SAE, saved as JSON plus a per-latent companion file.

Layout (../shared/METRICS.md, "Result file"): top-level `schema_version`, `sae`, `eval`, `metrics`,
`verdicts`, `provenance`, `timing`, plus `uncertainty` (standard errors beside the values),
`not_measured` (why a metric is null) and `notes`. Per-latent arrays live in `<stem>.details.safetensors`
next to the JSON, never in it. This module only describes and reads a result; writing its folder is
`saehealth.result_folder`'s (each file written to a temporary name and renamed, the folder swapped in whole).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saehealth.errors import SaeHealthError

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
DETAILS_FILE = "result.details.safetensors"

# A verdict's status, as result.json records it (thresholds.py decides which one a value gets).
HEALTHY = "healthy"
BORDERLINE = "borderline"
UNHEALTHY = "unhealthy"
NOT_MEASURED = "not measured"
STATUSES = (HEALTHY, BORDERLINE, UNHEALTHY, NOT_MEASURED)

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
    "absorption_fraction_saebench",  # the saebench-0.6 probe schedule's mean over the same word splits
)
# Next-token agreement of the spliced model with the clean one (docs/diagnostics.md), from the downstream tiles.
AGREEMENT_KEYS = ("next_token_agreement", "top5_overlap", "kl_div_random", "pathological_ratio")
# Dense latents no kind explains, and the share of latents that are token detectors (docs/diagnostics.md).
LATENT_KIND_KEYS = ("dense_unexplained", "dense_unexplained_fraction", "token_detector_fraction")
METRIC_KEYS = (
    RECONSTRUCTION_KEYS
    + DOWNSTREAM_KEYS
    + AGREEMENT_KEYS
    + SPARSITY_KEYS
    + LATENT_KIND_KEYS
    + GEOMETRY_KEYS
    + ABSORPTION_KEYS
)


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
    # The activation cache's layout ("minsae", "saelens", "tensor") when the SAE was scored from a cache
    # (`dataset` is then its path) instead of a replay through the model.
    activations: str | None = None
    # The absorption probe schedule (converged | saebench-0.6); results saved before it existed used neither.
    absorption_probes: str | None = None
    # Word splits the absorption numbers average over (both estimators share them); None before it was recorded.
    absorption_splits: int | None = None
    # Whether every sequence began with BOS (the SAE's prepend_bos); results saved before it existed did.
    prepend_bos: bool = True

    def absorption_estimator(self, key: str) -> str | None:
        """'converged probes, 5 word splits' for an absorption metric (None for other keys or old results)."""
        if key not in ABSORPTION_KEYS or key == "absorption_letters_scored":
            return None
        schedule = "saebench-0.6" if key == "absorption_fraction_saebench" else self.absorption_probes
        if schedule is None:
            return None
        splits = f", {self.absorption_splits} word split{'s' if self.absorption_splits != 1 else ''}"
        return f"{schedule} probes" + (splits if self.absorption_splits else "")


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
    world_size: int = 1  # torchrun processes that shared the pass


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
    # SAEBench 0.6's core metrics under its names and definitions (saehealth/saebench/core.py), for the
    # SAEBench export; empty in results saved before saehealth computed them.
    saebench_core: dict = field(default_factory=dict)
    # Routed SAEs only (RouteSAE): the router's settings and statistics (saehealth/routed/checks.py); else None.
    routing: dict | None = None
    # The diagnostics beyond the averages (docs/diagnostics.md): `by_position` (per log-spaced position bucket),
    # `dense_kinds` (what each dense latent is), `token_explained` (token-detector share); empty in results saved
    # before saehealth computed them, or from a pass run without them.
    diagnostics: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        """The result a `to_dict` made; SaeHealthError naming the first field that is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise SaeHealthError(f"holds a JSON {_json_type(data)}, not an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SaeHealthError(
                f"Result file has schema_version {version!r}, this saehealth reads {SCHEMA_VERSION}: "
                "re-run the evaluation with --force."
            )
        _check_fields(cls, data, "")
        for name, part in (("sae", SAEInfo), ("eval", EvalSettings), ("provenance", Provenance)):
            _check_fields(part, data[name], f"{name}.")
        for key, verdict in data.get("verdicts", {}).items():
            _check_verdict(verdict, f"verdicts.{key}")
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
            saebench_core=data.get("saebench_core", {}),
            routing=data.get("routing"),
            diagnostics=data.get("diagnostics", {}),
        )


def load_result(path: Path) -> EvalResult:
    """Read a result.json (or the folder holding one); SaeHealthError when it is not a readable saehealth result."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / RESULT_FILE
    if not path.is_file():
        raise SaeHealthError(f"No result file at {path}: run `saehealth eval` first or check the path.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SaeHealthError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from None
    except (UnicodeDecodeError, RecursionError):
        raise SaeHealthError(f"{path} is not a saehealth result: re-run the evaluation with --force.") from None
    except json.JSONDecodeError as exc:
        raise SaeHealthError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): re-run the evaluation with --force."
        ) from None
    try:
        return EvalResult.from_dict(data)
    except SaeHealthError as exc:
        if str(exc).startswith("Result file"):
            raise SaeHealthError(f"{path}: {exc}") from None
        raise SaeHealthError(
            f"{path} is not a saehealth result: it {exc}; re-run the evaluation with --force."
        ) from None


# Details arrays with one value per latent: the readers index them by latent id.
PER_LATENT_DETAILS = (
    "firing_counts",
    "feature_density",
    "saebench_feature_density",
    "consistent_activation_heuristic",
    "encoder_bias",
    "encoder_norm",
    "encoder_decoder_cosine",
    "max_decoder_cosine",
    "max_encoder_cosine",
    "nearest_decoder_latent",
)


def load_details(result_path: Path, d_sae: int | None = None) -> dict:
    """The per-latent arrays saved beside a result.json (empty dict when there are none). The file may have
    been edited or forged: with `d_sae` (the result's), the per-latent arrays must hold one value per latent and
    `nearest_decoder_latent` name latents that exist (-1: none); SaeHealthError otherwise."""
    folder = Path(result_path)
    folder = folder if folder.is_dir() else folder.parent
    details = folder / DETAILS_FILE
    if not details.is_file():
        return {}
    from safetensors.torch import load_file

    try:
        arrays = load_file(str(details))
    except Exception as exc:  # SafetensorError, OSError: a truncated, corrupt or unreadable file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SaeHealthError(
            f"{details} cannot be read ({first}): re-run the evaluation with --force to write it again."
        ) from None
    problem = _details_problem(arrays, d_sae) if d_sae is not None else None
    if problem is not None:
        raise SaeHealthError(f"{details} does not belong to its result.json ({problem}): re-run with --force.")
    return arrays


def _details_problem(arrays: dict, d_sae: int) -> str | None:
    for name in PER_LATENT_DETAILS:
        array = arrays.get(name)
        if array is not None and (tuple(array.shape) != (d_sae,) or array.dtype.is_complex):
            return f"{name} has shape {tuple(array.shape)}, the SAE {d_sae} latents"
    nearest = arrays.get("nearest_decoder_latent")
    if (
        nearest is not None
        and nearest.numel()
        and (nearest.dtype.is_floating_point or not (-1 <= nearest).all() or not (nearest < d_sae).all())
    ):
        return "nearest_decoder_latent names latents that do not exist"
    return None


# ---------------------------------------------------------------------------------------------- validation
def _check_fields(cls, data, where: str) -> None:
    """SaeHealthError (text to follow 'it') for a missing, unknown or wrongly typed field of dataclass `cls`."""
    if not isinstance(data, dict):
        raise SaeHealthError(f"has {where.rstrip('.') or 'its top level'} as a JSON {_json_type(data)}, not an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise SaeHealthError(f"lacks the field {where}{name}")
            continue
        value, hint = data[name], hints[name]
        if typing.get_origin(hint) is dict and isinstance(value, dict):  # name the entry that is wrong
            for key, item in value.items():
                if not _matches(item, typing.get_args(hint)[1]):
                    name, value, hint = f"{name}.{key}", item, typing.get_args(hint)[1]
                    break
        if not _matches(value, hint):
            raise SaeHealthError(
                f"has {where}{name} = {_shown(value)} (a JSON {_json_type(value)}), expected {_describe(hint)}"
            )
    unknown = sorted(set(data) - set(fields))
    if unknown and where:  # extra top-level keys are fine (`saehealth eval --json` output adds advice, summary)
        raise SaeHealthError(f"has unknown field(s) {', '.join(where + k for k in unknown)}")


def _check_verdict(verdict, where: str) -> None:
    if not isinstance(verdict, dict):
        raise SaeHealthError(f"has {where} as a JSON {_json_type(verdict)}, expected an object")
    checks = {"status": lambda v: v in STATUSES, "value": lambda v: _matches(v, float | None)}
    for key, ok in checks.items():
        if not ok(verdict.get(key)):
            raise SaeHealthError(f"has {where}.{key} = {_shown(verdict.get(key))}, which is not a valid verdict {key}")


def _matches(value, hint) -> bool:
    """Whether a JSON value fits a type hint (int is not bool; a float field takes an int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is typing.Any:
        return True
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # its own fields are checked by the caller
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in args)
    if origin is dict or hint is dict:
        return (
            isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
            if args
            else isinstance(value, dict)
        )
    if origin is list or hint is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        kinds = [arg for arg in args if not (arg is int and float in args)]  # a number covers whole numbers
        return " or ".join(_describe(arg) for arg in kinds)
    if origin is dict or hint is dict:
        return f"an object of {_describe(args[1])} values" if args else "an object"
    if origin is list or hint is list:
        return f"a list of {_describe(args[0])} values" if args else "a list"
    return {float: "a number", int: "a whole number", str: "a string", bool: "true or false", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(value) -> str:
    text = (
        json.dumps(value) if not isinstance(value, (dict, list)) else ("{...}" if isinstance(value, dict) else "[...]")
    )
    return text if len(text) <= 40 else text[:37] + "..."
