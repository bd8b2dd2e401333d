"""Typed, validated settings for one evaluation run (built by the CLI and by `saehealth.evaluate`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from saehealth.errors import ConfigError, suggest
from saehealth.saebench import NEEDS_GEOMETRY, NEEDS_REPLAY

SKIPPABLE = ("absorption", "geometry", "pathological")
DEFAULT_MAX_TOKENS = 200_000
MAX_SEED = 2**32 - 1
DEFAULT_EXAMPLES = 20  # top activations kept per latent (metrics/latents.py)
DEFAULT_HTML_LATENTS = 200  # latents with full cards in report.html
# Upper bounds on the whole-number options: far above any real run, low enough that no size computed from them
# overflows (a C integer) or asks for more memory than a machine has before the run even starts.
MAX_EXAMPLES = 1_000  # per latent, times d_sae (and a sample of half as many): the latent example state
LIMITS = {
    "n_tokens": 10**12,
    "num_samples": 10**12,
    "context_length": 2**24,
    "batch_size": 2**24,
    "layer": 10**6,
    "examples": MAX_EXAMPLES,
    "html_latents": 2**31,
}
# The absorption probe schedules (saehealth.absorption.probes.SCHEDULES; a test keeps the two equal).
ABSORPTION_PROBES = ("converged", "saebench-0.6")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides what an evaluation computes. None means: take it from the checkpoint."""

    sae_path: str
    model: str | None = None
    hook: str | None = None
    layer: int | None = None
    dataset: str | None = None
    split: str | None = None
    n_tokens: int | None = None  # None: the whole split, up to DEFAULT_MAX_TOKENS
    num_samples: int | None = None  # alternative to n_tokens: number of sequences
    context_length: int | None = None
    batch_size: int = 16
    device: str = "auto"  # resolved on construction: cuda if available, else mps, else cpu
    dtype: str | None = None  # None: the dtype the SAE was trained in, else float32 (planning.choose_dtype)
    seed: int = 42
    out: Path | None = None
    force: bool = False
    include_special_tokens: bool = False
    skip: tuple[str, ...] = ()
    format: str | None = None
    thresholds: str | None = None
    absorption_min_letters: int = 20
    # An activation cache (minSAE folder, SAELens dataset, .safetensors/.npy) to score instead of a replay.
    activations: str | None = None
    saebench_out: Path | None = None  # also write SAEBench 0.6 result files under this folder
    examples: int = DEFAULT_EXAMPLES  # top activations kept per latent (and a sample of half as many); 0: none
    html_latents: int = DEFAULT_HTML_LATENTS  # latents with full cards in report.html (not part of the numbers)
    absorption_probes: str = "converged"  # probe schedule: converged | saebench-0.6 (saehealth.absorption.SCHEDULES)
    verbose: bool = False
    route: str | None = None  # routed SAEs: settings the checkpoint lacks (saehealth.routed.options)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "n_tokens",
            "num_samples",
            "context_length",
            "batch_size",
            "seed",
            "layer",
            "examples",
            "html_latents",
        ):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be a whole number, got {value!r}.")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"{_flag(name)} must be at most {limit:,}, got {value:,}.{_WHY_LIMIT.get(name, '')}")
        if self.n_tokens is not None and self.num_samples is not None:
            raise ConfigError("Give --tokens or --num-samples, not both.")
        for name in ("n_tokens", "num_samples", "context_length", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{_flag(name)} must be a positive number, got {value}.")
        if not 0 <= self.seed <= MAX_SEED:  # numpy and scikit-learn take 32-bit seeds (probes come after the pass)
            raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}.")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"--layer must be 0 or more, got {self.layer}.")
        if self.hook is not None and self.layer is not None:
            raise ConfigError("Give --hook or --layer, not both.")
        for item in self.skip:
            if item not in SKIPPABLE:
                raise ConfigError(
                    f"Cannot skip {item!r}: choose from {', '.join(SKIPPABLE)}.{suggest(item, SKIPPABLE)}"
                )
        if self.out is not None and not isinstance(self.out, (str, os.PathLike)):
            raise ConfigError(f"out must be a folder path, got {self.out!r}.")
        if self.examples < 0:
            raise ConfigError(f"--examples must be 0 (no latent examples) or more, got {self.examples}.")
        check_html_latents(self.html_latents)
        if not 1 <= self.absorption_min_letters <= 26:
            raise ConfigError(
                f"--absorption-min-letters {self.absorption_min_letters} is outside 1 – 26: give a number of letters."
            )
        if self.absorption_probes not in ABSORPTION_PROBES:
            raise ConfigError(
                f"Unknown --absorption-probes {self.absorption_probes!r}: choose from {', '.join(ABSORPTION_PROBES)}."
                + suggest(self.absorption_probes, ABSORPTION_PROBES)
            )
        if self.activations is not None and (self.dataset is not None or self.split is not None):
            raise ConfigError("--activations and --dataset/--split both name the evaluation data: give one of them.")
        if self.saebench_out is not None and self.activations is not None:
            raise ConfigError(NEEDS_REPLAY)
        if self.saebench_out is not None and "geometry" in self.skip:
            raise ConfigError(NEEDS_GEOMETRY)
        from saehealth.models import DTYPES

        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(
                f"Unknown --dtype {self.dtype!r}: choose from {', '.join(DTYPES)}.{suggest(self.dtype, DTYPES)}"
            )
        # Frozen, so set through object: from here on the config names the device this process really uses.
        object.__setattr__(self, "device", resolve_device(self.device))


def resolve_device(device: str) -> str:
    """The device to run on: `auto` is cuda if available, else mps, else cpu; under torchrun, `cuda` (or auto
    on a GPU machine) is this rank's `cuda:LOCAL_RANK`. Unavailable or unknown devices are refused."""
    import torch

    from saehealth import distributed

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    _check_device(device)
    if device == "cuda" and distributed.active():
        device = f"cuda:{distributed.ranks().local_rank}"
    return device


def check_html_latents(count: int) -> None:
    """--html-latents must be 0 or more (0: report.html lists the groups, with no cards), and not absurdly many."""
    if count < 0:
        raise ConfigError(f"--html-latents must be 0 or more, got {count}.")
    if count > LIMITS["html_latents"]:
        raise ConfigError(f"--html-latents must be at most {LIMITS['html_latents']:,}, got {count:,}.")


_WHY_LIMIT = {
    "examples": " Each latent keeps that many top activations and half as many sampled ones, with their "
    "contexts, in memory: 20 (the default) to a few hundred is what the reports use."
}


def _flag(name: str) -> str:
    """The command-line option of an EvalConfig field."""
    return {"n_tokens": "--tokens", "num_samples": "--num-samples"}.get(name, "--" + name.replace("_", "-"))


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use --device cpu.")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown --device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    index = device.partition(":")[2]
    if index and (kind != "cuda" or not index.isdigit()):
        raise ConfigError(f"Unknown --device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0."
        )
