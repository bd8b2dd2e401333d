"""Health bands and threshold presets (the verdicts they give are in verdicts.py).

A `Band` says where a metric is healthy and where it is still acceptable ("borderline"); outside the
acceptable range it is unhealthy. All bounds are inclusive, so the default preset reproduces
../shared/METRICS.md "Health verdicts" exactly (loss recovered 0.70 is healthy, 0.60 borderline).
A metric that was not measured is `not measured`, never healthy.

Presets live in a registry that refuses duplicate names: `default` (METRICS.md's four headline bands plus
secondary checks), `strict` and `lenient`. A user file (TOML or YAML) starts from a preset (`extends`,
default "default") and changes or adds bands:

    extends = "default"
    [loss_recovered]
    healthy_min = 0.80
    borderline_min = 0.70
    [l0]
    healthy_max = 100      # keys left out keep the preset's value; inf / -inf (YAML null) removes a bound

Secondary bands of the default preset, and why:
- explained_variance ≥ 0.70 healthy, ≥ 0.50 borderline: SAELens/SAEBench residual-stream SAEs at L0 40–120
  typically explain 70–90% of the (pooled) variance; below half is a reconstruction failure.
- kl_div_score ≥ 0.90, ≥ 0.80: good SAEs keep ≥ 90% of the next-token distribution (SAELens kl_div_score).
- delta_ce ≤ 0.10 nats, ≤ 0.30: the raw CE cost of splicing; well-trained SAEs cost around 0.05–0.2 nats,
  and this is the honest companion of loss recovered, which sits near 1 for mediocre SAEs.
- dense_unexplained_fraction ≤ 0.01, no unhealthy band: dense latents (density > 0.1) that no kind explains
  (position-tracking, antipodal pair, first-token: docs/diagnostics.md) are reported, not condemned.
- token_detector_fraction ≤ 0.5 (borderline ≤ 0.75), provisional: latents whose activation the current token
  alone explains (≥ 90% of its variance).
- near_duplicate_fraction ≤ 0.01, ≤ 0.05: share of latents whose decoder row has cosine > 0.9 with another
  latent's (derived from `near_duplicate_latents` / d_sae).
- decoder_redundancy ≤ 0.70, ≤ 0.90: mean of each latent's largest decoder cosine; above 0.9 most latents
  have a near copy. Its healthy level depends on d_in and d_sae, so the bands are deliberately loose.

Absorption bands name the estimator they were set for (BAND_ESTIMATORS): `absorption_fraction`'s for the
default `converged` probe schedule, `absorption_fraction_saebench`'s for SAEBench's `saebench-0.6` schedule.
The default preset's ≤ 0.25 / ≤ 0.35 is METRICS.md's (the 003 assessment), set on the
scale of the values Chanin et al. 2024 ("A is for Absorption") and SAEBench 0.6 publish, which use SAEBench's
probe schedule. The converged schedule reads lower on the same SAE and word splits: over 11 seeds of the demo
SAE (1–10 and the demo's 42; 2026-12-07; docs/absorption-estimators.md, scripts/crosscheck_saebench.py) the
saebench-0.6 schedule read 0.025 ± 0.010 higher (mean ± standard error; per seed −0.008 to +0.084), and
SAEBench's own eval 0.026 ± 0.011 higher than the converged estimator (seeds 1–10). So the bands translate by
SCHEDULE_GAP, that mean gap: in every preset the saebench-0.6 band is the converged one plus it, and
an SAE evaluated with `--absorption-probes saebench-0.6` is judged on it (verdicts.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from saehealth.errors import ConfigError, suggest
from saehealth.result import BORDERLINE, HEALTHY, METRIC_KEYS, NOT_MEASURED, STATUSES, UNHEALTHY  # noqa: F401

try:  # Python ≥ 3.11; on 3.10 TOML files need the tomli backport (YAML always works)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

# The verdict statuses (HEALTHY ... STATUSES) live with the result that records them, imported above and
# importable from here beside the bands.
HEADLINE_METRICS = ("loss_recovered", "l0", "dead_fraction", "absorption_fraction")
# The probe schedule each absorption band was set for (see the module docstring); the band of a schedule's
# estimator is found here by its schedule, so a headline measured under saebench-0.6 meets that schedule's band.
BAND_ESTIMATORS = {"absorption_fraction": "converged", "absorption_fraction_saebench": "saebench-0.6"}
# How much higher the saebench-0.6 schedule reads than the converged one on the same SAE and word splits
# (the mean gap over 11 seeds of the demo SAE, see above): the saebench-0.6 bands are the converged ones plus this.
SCHEDULE_GAP = 0.025

# Metrics computed here from the result's metrics (they need d_sae), usable in bands like any other key.
DERIVED_KEYS = ("near_duplicate_fraction",)
VALID_KEYS = METRIC_KEYS + DERIVED_KEYS
BAND_FIELDS = ("healthy_min", "healthy_max", "borderline_min", "borderline_max")
FILE_TOP_LEVEL_KEYS = ("extends", "description")


def format_bound(x: float) -> str:
    """A band boundary as people write it: 0.70, 40, 0.005, 1e-06."""
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x)}"
    two = f"{x:.2f}"
    return two if float(two) == x else f"{x:.3g}"


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is None and hi is None:
        return "any value"
    if lo is None:
        return f"≤ {format_bound(hi)}"
    if hi is None:
        return f"≥ {format_bound(lo)}"
    return f"{format_bound(lo)} – {format_bound(hi)}"


@dataclass(frozen=True)
class Band:
    """Healthy range ⊂ acceptable (borderline) range; outside the acceptable range is unhealthy. None = unbounded."""

    healthy_min: float | None = None
    healthy_max: float | None = None
    borderline_min: float | None = None
    borderline_max: float | None = None

    def __post_init__(self) -> None:
        if self.healthy_min is not None and self.healthy_max is not None and self.healthy_min > self.healthy_max:
            raise ConfigError(f"healthy_min {self.healthy_min} is above healthy_max {self.healthy_max}.")
        if self.borderline_min is not None and (self.healthy_min is None or self.borderline_min > self.healthy_min):
            raise ConfigError(
                f"borderline_min {self.borderline_min} must be at or below healthy_min {self.healthy_min}: "
                "the healthy range lies inside the borderline one."
            )
        if self.borderline_max is not None and (self.healthy_max is None or self.borderline_max < self.healthy_max):
            raise ConfigError(
                f"borderline_max {self.borderline_max} must be at or above healthy_max {self.healthy_max}: "
                "the healthy range lies inside the borderline one."
            )

    def status(self, value: float) -> str:
        """healthy / borderline / unhealthy for a measured value (bounds inclusive)."""
        if _inside(value, self.healthy_min, self.healthy_max):
            return HEALTHY
        if _inside(value, self.borderline_min, self.borderline_max):
            return BORDERLINE
        return UNHEALTHY

    def healthy_text(self) -> str:
        """'≥ 0.70', '40 – 120', '≤ 0.10'."""
        return _range_text(self.healthy_min, self.healthy_max)

    def borderline_text(self) -> str:
        """The borderline zone: '0.60 – 0.70', '20 – 40 or 120 – 200', '> 0.01', or '—' when there is none."""
        parts = []
        if self.healthy_min is not None and self.borderline_min != self.healthy_min:
            lo = self.borderline_min
            parts.append(
                f"< {format_bound(self.healthy_min)}"
                if lo is None
                else f"{format_bound(lo)} – {format_bound(self.healthy_min)}"
            )
        if self.healthy_max is not None and self.borderline_max != self.healthy_max:
            hi = self.borderline_max
            parts.append(
                f"> {format_bound(self.healthy_max)}"
                if hi is None
                else f"{format_bound(self.healthy_max)} – {format_bound(hi)}"
            )
        return " or ".join(parts) if parts else "—"

    def unhealthy_text(self) -> str:
        """'< 0.60', '< 20 or > 200', or '—' when no value is unhealthy."""
        parts = []
        if self.borderline_min is not None:
            parts.append(f"< {format_bound(self.borderline_min)}")
        if self.borderline_max is not None:
            parts.append(f"> {format_bound(self.borderline_max)}")
        return " or ".join(parts) if parts else "—"

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in BAND_FIELDS if getattr(self, name) is not None}


def _inside(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclass(frozen=True)
class Thresholds:
    """A named set of bands, in report order (headline metrics first)."""

    name: str
    bands: Mapping[str, Band]
    description: str = ""
    source: str = field(default="preset")  # "preset" or the file it was read from

    def headline(self) -> list[str]:
        return [key for key in HEADLINE_METRICS if key in self.bands]

    def secondary(self) -> list[str]:
        return [key for key in self.bands if key not in HEADLINE_METRICS]


# ---------------------------------------------------------------------------------------------- presets
_PRESETS: dict[str, Thresholds] = {}


def register_preset(thresholds: Thresholds) -> Thresholds:
    """Add a preset to the registry; a second preset of the same name is a programming error."""
    if thresholds.name in _PRESETS:
        raise ValueError(f"Threshold preset {thresholds.name!r} is already registered.")
    unknown = [key for key in thresholds.bands if key not in VALID_KEYS]
    if unknown:
        raise ValueError(f"Preset {thresholds.name!r} names unknown metrics {unknown}.")
    _PRESETS[thresholds.name] = thresholds
    return thresholds


def preset_names() -> list[str]:
    """Registered preset names, default first."""
    return sorted(_PRESETS, key=lambda name: (name != "default", name))


def get_preset(name: str) -> Thresholds:
    """A registered preset by name; an unknown name is a ConfigError listing the valid ones."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown thresholds preset {name!r}: use one of {', '.join(preset_names())} or a .toml/.yaml file."
            + suggest(name, _PRESETS)
        ) from None


def _saebench_band(healthy_max: float, borderline_max: float) -> Band:
    """The saebench-0.6 schedule's band: the converged schedule's, moved up by SCHEDULE_GAP."""
    return Band(
        healthy_max=round(healthy_max + SCHEDULE_GAP, 4), borderline_max=round(borderline_max + SCHEDULE_GAP, 4)
    )


_SECONDARY_DEFAULT = {
    "explained_variance": Band(healthy_min=0.70, borderline_min=0.50),
    "kl_div_score": Band(healthy_min=0.90, borderline_min=0.80),
    "delta_ce": Band(healthy_max=0.10, borderline_max=0.30),
    "dense_unexplained_fraction": Band(healthy_max=0.01),
    "near_duplicate_fraction": Band(healthy_max=0.01, borderline_max=0.05),
    "decoder_redundancy": Band(healthy_max=0.70, borderline_max=0.90),
    # Provisional (not calibrated on published SAEs): most latents reading only the current token.
    "token_detector_fraction": Band(healthy_max=0.5, borderline_max=0.75),
}

register_preset(
    Thresholds(
        name="default",
        description="METRICS.md 'Health verdicts' (from the 003 assessment) plus secondary checks.",
        bands={
            "loss_recovered": Band(healthy_min=0.70, borderline_min=0.60),
            "l0": Band(healthy_min=40, healthy_max=120, borderline_min=20, borderline_max=200),
            "dead_fraction": Band(healthy_max=0.10, borderline_max=0.20),
            "absorption_fraction": Band(healthy_max=0.25, borderline_max=0.35),
            "absorption_fraction_saebench": _saebench_band(0.25, 0.35),
            **_SECONDARY_DEFAULT,
        },
    )
)
register_preset(
    Thresholds(
        name="strict",
        description="For SAEs meant for publication or downstream use: tighter fidelity, fewer dead latents.",
        bands={
            "loss_recovered": Band(healthy_min=0.85, borderline_min=0.75),
            "l0": Band(healthy_min=40, healthy_max=100, borderline_min=25, borderline_max=150),
            "dead_fraction": Band(healthy_max=0.05, borderline_max=0.10),
            "absorption_fraction": Band(healthy_max=0.15, borderline_max=0.25),
            "absorption_fraction_saebench": _saebench_band(0.15, 0.25),
            "explained_variance": Band(healthy_min=0.80, borderline_min=0.65),
            "kl_div_score": Band(healthy_min=0.95, borderline_min=0.90),
            "delta_ce": Band(healthy_max=0.05, borderline_max=0.15),
            "dense_unexplained_fraction": Band(healthy_max=0.005, borderline_max=0.02),
            "near_duplicate_fraction": Band(healthy_max=0.005, borderline_max=0.02),
            "decoder_redundancy": Band(healthy_max=0.60, borderline_max=0.80),
        },
    )
)
register_preset(
    Thresholds(
        name="lenient",
        description="For quick experiments and small or early-training SAEs: wider L0 range, more dead latents allowed.",
        bands={
            "loss_recovered": Band(healthy_min=0.60, borderline_min=0.45),
            "l0": Band(healthy_min=10, healthy_max=200, borderline_min=5, borderline_max=400),
            "dead_fraction": Band(healthy_max=0.20, borderline_max=0.40),
            "absorption_fraction": Band(healthy_max=0.35, borderline_max=0.50),
            "absorption_fraction_saebench": _saebench_band(0.35, 0.50),
            "explained_variance": Band(healthy_min=0.60, borderline_min=0.40),
            "kl_div_score": Band(healthy_min=0.80, borderline_min=0.65),
            "delta_ce": Band(healthy_max=0.25, borderline_max=0.60),
            "dense_unexplained_fraction": Band(healthy_max=0.05),
            "near_duplicate_fraction": Band(healthy_max=0.05, borderline_max=0.15),
            "decoder_redundancy": Band(healthy_max=0.80, borderline_max=0.95),
        },
    )
)


# ---------------------------------------------------------------------------------------------- user files
def load_thresholds(spec: str | Path | Thresholds | None = None) -> Thresholds:
    """A preset by name, or a TOML/YAML file that extends one; None means "default"."""
    if spec is None:
        return get_preset("default")
    if isinstance(spec, Thresholds):
        return spec
    text = str(spec)
    if text in _PRESETS:
        return _PRESETS[text]
    path = Path(text).expanduser()
    if path.suffix.lower() in (".toml", ".yaml", ".yml") or path.exists():
        return _load_file(path)
    return get_preset(text)  # raises with the valid names


def _load_file(path: Path) -> Thresholds:
    if not path.is_file():
        raise ConfigError(
            f"Thresholds file {path} does not exist: check the path or use a preset ({', '.join(preset_names())})."
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if tomllib is None:
                raise ConfigError(f"Reading {path} needs Python ≥ 3.11 or `pip install tomli`; or write it as YAML.")
            data = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        else:
            raise ConfigError(f"Thresholds file {path} must end in .toml, .yaml or .yml.")
    except (ValueError, yaml.YAMLError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ConfigError(f"Thresholds file {path} is not valid {suffix[1:].upper()}: {first_line}.") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Thresholds file {path} must be a table of metrics, e.g. [loss_recovered] healthy_min = 0.7."
        )
    return thresholds_from_mapping(data, name=path.name, source=str(path))


def thresholds_from_mapping(data: Mapping, name: str = "custom", source: str = "mapping") -> Thresholds:
    """Build thresholds from a parsed file: `extends`, `description` and one table per metric."""
    base_name = data.get("extends", "default")
    if not isinstance(base_name, str):
        raise ConfigError(f"{source}: 'extends' must be a preset name ({', '.join(preset_names())}).")
    base = get_preset(base_name)
    bands = dict(base.bands)
    for key, table in data.items():
        if key in FILE_TOP_LEVEL_KEYS:
            continue
        if key not in VALID_KEYS:
            raise ConfigError(
                f"{source}: unknown metric {key!r}.{suggest(key, VALID_KEYS)} Valid metrics: {', '.join(VALID_KEYS)}."
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {key} must be a table of {', '.join(BAND_FIELDS)}, not {table!r}.")
        bad = [name for name in table if name not in BAND_FIELDS]
        if bad:
            raise ConfigError(
                f"{source}: {key} has unknown field {bad[0]!r}.{suggest(str(bad[0]), BAND_FIELDS)} "
                f"Valid fields: {', '.join(BAND_FIELDS)}."
            )
        changes = {name: _bound(source, key, name, value) for name, value in table.items()}
        try:
            bands[key] = replace(bands.get(key, Band()), **changes)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    description = data.get("description", f"{base.name} preset changed by {source}")
    return Thresholds(name=name, bands=bands, description=str(description), source=source)


def _bound(source: str, key: str, name: str, value) -> float | None:
    """A number; ±inf or null means no bound."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {key}.{name} must be a number, not {value!r}.")
    value = float(value)
    if math.isnan(value):
        raise ConfigError(f"{source}: {key}.{name} is NaN: give a number, or inf to remove the bound.")
    return None if math.isinf(value) else value


def thresholds_to_toml(thresholds: Thresholds) -> str:
    """The bands as a TOML file a user can copy and edit (unbounded sides are left out)."""
    lines = [
        f"# saehealth thresholds: {thresholds.description}",
        f'extends = "{thresholds.name if thresholds.source == "preset" else "default"}"',
        "",
    ]
    for key, band in thresholds.bands.items():
        if key in BAND_ESTIMATORS:
            lines.append(f"# set for the {BAND_ESTIMATORS[key]} probe schedule")
        lines.append(f"[{key}]")
        lines.extend(f"{name} = {value:g}" for name, value in band.as_dict().items())
        lines.append("")
    return "\n".join(lines)
