"""Typed, validated settings for one evaluation run (built by the CLI and by `saehealth.evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saehealth.errors import ConfigError, suggest

SKIPPABLE = ("absorption", "geometry")
DEFAULT_MAX_TOKENS = 200_000
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
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 42
    out: Path | None = None
    force: bool = False
    include_special_tokens: bool = False
    skip: tuple[str, ...] = ()
    format: str | None = None
    thresholds: str | None = None
    absorption_min_letters: int = 20
    absorption_probes: str = "converged"  # probe schedule: converged | saebench-0.6 (saehealth.absorption.SCHEDULES)
    verbose: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_tokens is not None and self.num_samples is not None:
            raise ConfigError("Give --tokens or --num-samples, not both.")
        for name in ("n_tokens", "num_samples", "context_length", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                flag = {"n_tokens": "--tokens", "num_samples": "--num-samples"}.get(name, "--" + name.replace("_", "-"))
                raise ConfigError(f"{flag} must be a positive number, got {value}.")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"--layer must be 0 or more, got {self.layer}.")
        if self.hook is not None and self.layer is not None:
            raise ConfigError("Give --hook or --layer, not both.")
        for item in self.skip:
            if item not in SKIPPABLE:
                raise ConfigError(
                    f"Cannot skip {item!r}: choose from {', '.join(SKIPPABLE)}.{suggest(item, SKIPPABLE)}"
                )
        if self.absorption_min_letters < 1:
            raise ConfigError("The minimum number of absorption letters must be at least 1.")
        if self.absorption_probes not in ABSORPTION_PROBES:
            raise ConfigError(
                f"Unknown --absorption-probes {self.absorption_probes!r}: choose from {', '.join(ABSORPTION_PROBES)}."
                + suggest(self.absorption_probes, ABSORPTION_PROBES)
            )
        _check_device(self.device)


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use --device cpu.")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown --device {device!r}: use cpu, cuda, cuda:N or mps.")
