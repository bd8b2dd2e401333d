"""First-letter feature absorption, SAEBench 0.6's method (Chanin et al. 2024, "A is for Absorption").

A latent that should fire on every word starting with S stays silent on " short" because a
token-specific latent has absorbed the direction. `words` (word list, splits, prompts), `probes` (the
probe trainer and its two schedules), `ksparse` (main latents by k-sparse probing), `scoring` (latents,
per-word absorption), `cache` (the model-level half on disk) and `measure` (`measure_absorption`, the
entry point).
"""

from saehealth.absorption.measure import (
    METRIC_KEYS,
    AbsorptionResult,
    AbsorptionSettings,
    absorption_applicable,
    measure_absorption,
)
from saehealth.absorption.probes import DEFAULT_SCHEDULE, SCHEDULES

__all__ = [
    "DEFAULT_SCHEDULE",
    "METRIC_KEYS",
    "SCHEDULES",
    "AbsorptionResult",
    "AbsorptionSettings",
    "absorption_applicable",
    "measure_absorption",
]
