"""After the pass: one SAE's geometry and absorption, its typed result, and its verdicts.

Everything here is per SAE and needs no more tokens: the pass's accumulated numbers (`scoring.PassOutput`) are
joined by decoder geometry (from the weights) and absorption (which prompts the model itself, its model-level
half cached on disk), then assessed against the thresholds.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from saehealth.config import EvalConfig
from saehealth.loading.objects import NO_DECODER, decoder_matrix
from saehealth.metrics.encoder_geometry import encoder_geometry
from saehealth.metrics.geometry import geometry_metrics
from saehealth.planning import Plan
from saehealth.result import (
    ABSORPTION_KEYS,
    GEOMETRY_KEYS,
    METRIC_KEYS,
    EvalResult,
    EvalSettings,
    Provenance,
    SAEInfo,
)
from saehealth.sae_scorer import PassOutput, chunk_tokens
from saehealth.saebench.core import core_metrics
from saehealth.verdicts import result_verdicts

PATHOLOGICAL_KEYS = ("kl_div_random", "pathological_ratio")  # metrics/pathological.py


def finish_result(
    config: EvalConfig,
    plan: Plan,
    output: PassOutput,
    *,
    timing: dict[str, float],
    notes: list[str],
    not_measured: dict[str, str],
    started_at: datetime,
    request: dict,
) -> tuple[EvalResult, dict]:
    """The assessed `EvalResult` of one SAE and its per-latent details (`timing`, `not_measured` are updated)."""
    loaded, sae = plan.loaded, plan.sae
    metrics, details = output.metrics, output.details

    t0 = time.perf_counter()
    geometry_skipped = "skipped with --skip geometry" if "geometry" in config.skip else None
    if geometry_skipped or decoder_matrix(sae) is None:
        for key in GEOMETRY_KEYS:
            not_measured[key] = geometry_skipped or NO_DECODER
    else:
        # Blocks of cosines as large as one chunk tensor of the pass: geometry stays within the pass's budget.
        block_rows = chunk_tokens(int(sae.cfg.d_sae), sae.W_dec.device)
        geometry, per_latent = geometry_metrics(sae.W_dec, block_rows=block_rows)
        metrics.update(geometry)
        details.update(per_latent)
        if getattr(sae, "W_enc", None) is not None:  # an SAE object may expose its decoder only
            details.update(encoder_geometry(sae, block_rows=block_rows))
    timing["geometry_s"] = time.perf_counter() - t0

    by_position = output.diagnostics.get("by_position")
    if by_position is not None:  # the plot marks where the SAE's training context ended
        by_position["training_context"] = loaded.context_size

    t0 = time.perf_counter()
    absorption, absorption_uncertainty, absorption_splits = _absorption(config, plan, details, not_measured, notes)
    metrics.update(absorption)
    timing["absorption_s"] = time.perf_counter() - t0

    if "pathological" in config.skip:
        not_measured.update(dict.fromkeys(PATHOLOGICAL_KEYS, "skipped with --skip pathological"))
    elif loaded.output_hook_name and loaded.output_hook_name != plan.hook:
        reason = "a transcoder's error is at another hook than its input: not checked"
        not_measured.update(dict.fromkeys(PATHOLOGICAL_KEYS, reason))
    for key in METRIC_KEYS:
        metrics.setdefault(key, None)
        if metrics[key] is None and key not in not_measured:
            not_measured[key] = "could not be computed on this data (see notes)"
    result = EvalResult(
        sae=SAEInfo(
            path=str(config.sae_path),
            source_library=loaded.source_library,
            architecture=loaded.architecture,
            d_in=int(sae.cfg.d_in),
            d_sae=int(sae.cfg.d_sae),
            hook_name=plan.hook,
            output_hook_name=loaded.output_hook_name,
            hook_head_index=loaded.hook_head_index,
            model_name=loaded.model_name,
            training=_jsonable(loaded.training),
        ),
        eval=EvalSettings(
            model=plan.model_name,
            dataset=plan.dataset_name,
            split=plan.split,
            n_tokens=output.tokens_run,
            tokens_scored=output.tokens_scored,
            context_length=plan.context,
            batch_size=config.batch_size,
            seed=config.seed,
            mask_special_tokens=not config.include_special_tokens and plan.special_tokens_known,
            n_sequences=output.n_sequences,
            activations=plan.activations,
            absorption_probes=config.absorption_probes,
            absorption_splits=absorption_splits,
            prepend_bos=plan.prepend_bos,
        ),
        metrics={k: _clean_number(v) for k, v in metrics.items()},
        uncertainty={k: v for k, v in {**output.uncertainty, **absorption_uncertainty}.items() if math.isfinite(v)},
        not_measured=not_measured,
        provenance=provenance(config, started_at),
        timing={k: round(v, 4) for k, v in timing.items()},
        notes=[*loaded.notes, *notes],
        request=request,
        saebench_core={
            k: _clean_number(v) for k, v in core_metrics(metrics, output.saebench, details, output.tokens_run).items()
        },
        routing=output.routing,
        diagnostics=output.diagnostics,
    )
    result.verdicts = result_verdicts(result, config.thresholds)
    return result, details


def logit_lens_of(plan: Plan) -> tuple[dict | None, str | None]:
    """The logit lens of the SAE's decoder rows (metrics/logit_lens.py), or None and why there is none."""
    from saehealth.metrics.logit_lens import logit_lens

    if plan.model is None:
        return None, "no model was loaded (an activation cache): pass --model NAME for the logit lens"
    if decoder_matrix(plan.sae) is None:
        return None, NO_DECODER
    if plan.site is None:  # an activation cache scored with --model (for absorption): the hook it was read at
        return logit_lens(plan.model, plan.sae.W_dec, plan.hook, plan.loaded.hook_head_index)
    return logit_lens(plan.model, plan.sae.W_dec, plan.site.hook_name, plan.site.head_index)


def _absorption(config: EvalConfig, plan: Plan, details: dict, not_measured: dict[str, str], notes: list[str]):
    """(absorption metrics, their uncertainty, word splits or None), the per-letter arrays put into `details`."""
    from saehealth.absorption import AbsorptionSettings, absorption_applicable, measure_absorption

    keys = ABSORPTION_KEYS
    reason = "skipped with --skip absorption" if "absorption" in config.skip else absorption_applicable(plan.hook)
    if plan.route is not None:
        from saehealth.routed.checks import ROUTED_ABSORPTION

        reason = ROUTED_ABSORPTION
    if reason is None and plan.model is None:  # an activation cache, without --model
        reason = "absorption prompts the model, which an activation cache lacks: add --model NAME to measure it"
    if reason is None and decoder_matrix(plan.sae) is None:  # latent shares are in decoder-row units
        reason = NO_DECODER
    if reason is not None:
        not_measured.update(dict.fromkeys(keys, reason))
        return dict.fromkeys(keys), {}, None
    result = measure_absorption(
        plan.model,
        plan.sae,
        plan.hook,
        seed=config.seed,
        cache_dir=cache_dir(),
        device=config.device,
        settings=AbsorptionSettings(schedule=config.absorption_probes, min_letters=config.absorption_min_letters),
    )
    for name, array in result.per_letter.items():
        details[f"absorption_{name}"] = torch.as_tensor(array)
    notes.extend(result.notes)
    not_measured.update({key: why for key, why in result.not_measured.items() if result.metrics.get(key) is None})
    return {**dict.fromkeys(keys), **result.metrics}, result.uncertainty, result.n_splits


def cache_dir() -> Path:
    """Where model-level work is cached: $SAEHEALTH_CACHE, else (unset or empty) ~/.cache/saehealth/absorption, a
    folder of its own (the cache refuses a folder holding anything else, and ~/.cache/saehealth also holds the
    SAEBench cross-check's virtualenv)."""
    return Path(os.environ.get("SAEHEALTH_CACHE") or Path.home() / ".cache" / "saehealth" / "absorption").expanduser()


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def provenance(config: EvalConfig, started_at: datetime) -> Provenance:
    from saehealth.distributed import ranks

    return Provenance(
        saehealth=_package_version("saehealth"),
        sae_lens=_package_version("sae-lens"),
        transformer_lens=_package_version("transformer-lens"),
        torch=torch.__version__,
        device=config.device,
        dtype=config.dtype,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=round((datetime.now(timezone.utc) - started_at).total_seconds(), 3),
        world_size=ranks().world_size,
    )


def _clean_number(value):
    """JSON-safe metric: NaN/Inf become None (a metric that is not a number was not measured)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(obj):
    """Best-effort conversion of checkpoint training facts to JSON-safe values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)
