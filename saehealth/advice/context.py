"""What a rule reads (`AdviceContext`: the result, its details and verdicts) and how it cites numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saehealth.result import EvalResult
from saehealth.thresholds import BORDERLINE, NOT_MEASURED, UNHEALTHY, load_thresholds

NOT_OK = (BORDERLINE, UNHEALTHY)


@dataclass
class Finding:
    """One diagnosis: what is wrong (citing the numbers), what to change, and how much it matters."""

    title: str
    detail: str
    recommendation: str
    severity: str  # critical | warning | info | ok
    rule: str = ""


@dataclass
class AdviceContext:
    result: EvalResult
    details: dict
    verdicts: dict

    @property
    def metrics(self) -> dict:
        return self.result.metrics

    @property
    def architecture(self) -> str:
        return str(self.result.sae.architecture or self.training("architecture") or "").lower()

    def training(self, *names: str):
        """The first recorded training setting among `names` (checkpoints spell some differently)."""
        for name in names:
            value = self.result.sae.training.get(name)
            if value is not None:
                return value
        return None

    def status(self, key: str) -> str:
        verdict = self.verdicts.get(key)
        return verdict["status"] if verdict else NOT_MEASURED

    def value(self, key: str):
        verdict = self.verdicts.get(key)
        if verdict is not None and verdict.get("value") is not None:
            return verdict["value"]
        return self.metrics.get(key)

    def array(self, key: str) -> np.ndarray | None:
        value = self.details.get(key)
        if value is None:
            return None
        return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)

    def healthy_range(self, key: str) -> tuple[float | None, float | None]:
        verdict = self.verdicts.get(key, {})
        if "healthy_range" in verdict:
            lo, hi = verdict["healthy_range"]
            return lo, hi
        band = load_thresholds().bands[key]
        return band.healthy_min, band.healthy_max


def num(x) -> str:
    """A number for prose: 131,072 / 0.888 / 1.5e-05."""
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2g}"
    return f"{x:.3g}"


def sentence(text: str) -> str:
    """Upper-case the first letter only (str.capitalize would lower-case 'TopK')."""
    return text[:1].upper() + text[1:]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def cite(ctx: AdviceContext, key: str) -> str:
    """'loss_recovered 0.072 (unhealthy; healthy ≥ 0.70)'."""
    verdict = ctx.verdicts.get(key, {})
    return f"{key} {num(ctx.value(key))} ({verdict.get('status', '?')}; healthy {verdict.get('band', '?')})"


# The eval engine saves per-letter absorption as `absorption_<name>` (names: PER_LETTER_FLOATS in absorption/measure.py);
# `absorption_per_letter` is accepted as an alias of the per-letter absorption fraction.
PER_LETTER_ABSORPTION_KEYS = ("absorption_absorption_fraction", "absorption_per_letter")


def per_letter_absorption(details: dict) -> np.ndarray | None:
    """The 26 per-letter absorption fractions from the details (NaN where a letter was not scored), or None."""
    for key in PER_LETTER_ABSORPTION_KEYS:
        value = details.get(key)
        if value is None:
            continue
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)
        if array.shape == (26,):
            return array
    return None
