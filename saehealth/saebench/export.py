"""Write an evaluation as SAEBench 0.6 result files, named and laid out as SAEBench lays them out.

SAEBench writes one JSON file per SAE and eval, `<output_folder>/<release>_<sae_id>_eval_results.json`, with
`eval_results/core/` and `eval_results/absorption/` as its default output folders; a custom SAE (not a SAELens
release) gets sae_id `custom_sae` and the name the user gave it as its release. Its graphing code
(`sae_bench_utils/graphing_utils.py`) reads these files, so saehealth results can be plotted beside SAEBench's.

Every field the schemas (`eval_output_schema_core.json`, `eval_output_schema_absorption_first_letter.json`)
require is filled from saehealth's own computation. Two conventions are SAEBench's own: a value that is 0/0
(e.g. the consistent_activation_heuristic of a latent that never fired) is written as -1, as SAEBench's
`replace_nans_with_negative_one` does; and an absorption eval with too few usable letters writes no file.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from saehealth.errors import OutputError, SaeHealthError
from saehealth.result import EvalResult, load_details
from saehealth.saebench import NEEDS_GEOMETRY, NEEDS_REPLAY, SAEBENCH_VERSION
from saehealth.saebench.core import CORE_CATEGORIES
from saehealth.shared_folder import add_files, check_shared_folder

CORE_FOLDER, ABSORPTION_FOLDER = "core", "absorption"
SAEBENCH_KIND, SAEBENCH_OPTION = "saebench", "--saebench-out"  # the folder's manifest kind; the option naming it
CUSTOM_SAE_ID = "custom_sae"  # SAEBench's sae_id for an SAE that is not a SAELens release
FLOAT_DIGITS = 10  # SAEBench's DEFAULT_FLOAT_PRECISION for per-latent values
# Per-latent details file key -> SAEBench CoreFeatureMetric field.
LATENT_FIELDS = {
    "saebench_feature_density": "feature_density",
    "consistent_activation_heuristic": "consistent_activation_heuristic",
    "encoder_bias": "encoder_bias",
    "encoder_norm": "encoder_norm",
    "encoder_decoder_cosine": "encoder_decoder_cosine_sim",
    "max_decoder_cosine": "max_decoder_cosine_sim",
    "max_encoder_cosine": "max_encoder_cosine_sim",
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class SAEBenchFiles:
    """What an export wrote, and why a file SAEBench would write was not (None when all were)."""

    paths: list[Path] = field(default_factory=list)
    absorption_skipped: str | None = None


def export_result(result: EvalResult, sae, out: Path, folder: Path, console=None, name: str | None = None):
    """Write the SAEBench files of a saved result (its folder holds the per-latent details) for `sae`, named
    after the result folder unless `name` is given; tell `console` where they went. Returns `SAEBenchFiles`."""
    name = name or Path(folder).resolve().name
    files = write_saebench_results(result, load_details(folder, result.sae.d_sae), sae.cfg.to_dict(), Path(out), name)
    if console is not None:
        for path in files.paths:
            console.print(f"SAEBench: {path}", highlight=False, soft_wrap=True)
        if files.absorption_skipped:
            console.print(f"[dim]SAEBench: {files.absorption_skipped}.[/]", highlight=False)
    return files


def export_refusal(result: EvalResult) -> str | None:
    """Why SAEBench's core file cannot be written from this result (None when it can): its schema requires
    the downstream metrics and the latent geometry."""
    if result.eval.activations is not None:
        return NEEDS_REPLAY
    if "geometry" in (result.request.get("skip") or ()):
        return NEEDS_GEOMETRY
    return None


def result_file_name(name: str) -> str:
    """SAEBench's `get_results_filepath` name for a custom SAE called `name`."""
    return f"{name}_{CUSTOM_SAE_ID}_eval_results.json".replace("/", "_")


def write_saebench_results(
    result: EvalResult, details: Mapping[str, torch.Tensor], sae_cfg: Mapping, out: Path, name: str
) -> SAEBenchFiles:
    """Write `out/core/<name>_custom_sae_eval_results.json` and, when absorption was measured, the same name
    under `out/absorption/`. `sae_cfg` is the SAE's SAELens config (`sae.cfg.to_dict()`). Both documents are
    built before either is written, so a result that cannot be exported writes nothing."""
    documents = {CORE_FOLDER: core_document(result, details, sae_cfg, name)}
    absorption, skipped = absorption_document(result, details, sae_cfg, name)
    if absorption is not None:
        documents[ABSORPTION_FOLDER] = absorption
    texts = {
        f"{folder}/{result_file_name(name)}": json.dumps(document, indent=2, default=str, allow_nan=False) + "\n"
        for folder, document in documents.items()
    }
    paths = add_files(out, SAEBENCH_KIND, texts, option=SAEBENCH_OPTION)
    return SAEBenchFiles(paths=paths, absorption_skipped=skipped)


def check_saebench_out(out: Path, names: list[str], owned: Path | None = None) -> Path:
    """Before any work: OutputError unless `out` can take the SAEBench files of SAEs named `names` (the
    filesystem root, a file, an unwritable folder, or a same-named file saehealth did not write are refused),
    and `out` is not the result or comparison folder `owned` or inside it (which is replaced whole)."""
    path = check_shared_folder(out, SAEBENCH_KIND, saebench_names(names), option=SAEBENCH_OPTION)
    if owned is not None:
        owned = Path(os.path.realpath(os.path.expanduser(owned)))
        if path == owned or owned in path.parents:
            raise OutputError(
                f"{SAEBENCH_OPTION} {path} is inside the output folder {owned}, which saehealth replaces whole: "
                "give a folder outside it, e.g. eval_results."
            )
    return path


def saebench_names(names: list[str]) -> list[str]:
    """The files, relative to the SAEBench output folder, that the export of SAEs named `names` may write."""
    return [f"{folder}/{result_file_name(name)}" for name in names for folder in (CORE_FOLDER, ABSORPTION_FOLDER)]


def core_document(result: EvalResult, details: Mapping[str, torch.Tensor], sae_cfg: Mapping, name: str) -> dict:
    """SAEBench's CoreEvalOutput for this result, as the dictionary its `to_json_file` writes."""
    refusal = export_refusal(result)
    if refusal is not None:
        raise SaeHealthError(refusal)
    core = result.saebench_core
    missing = [key for keys in CORE_CATEGORIES.values() for key in keys if key not in core]
    missing += [key for key in LATENT_FIELDS if key not in details]
    if missing:
        raise SaeHealthError(
            f"{result.sae.path}: the saved result predates saehealth's SAEBench metrics "
            f"({', '.join(missing[:3])} missing): re-run it with --force."
        )
    e = result.eval
    batches = math.ceil(e.n_sequences / max(e.batch_size, 1))
    config = {
        "model_name": e.model,
        "llm_dtype": result.provenance.dtype,
        "batch_size_prompts": e.batch_size,
        "n_eval_reconstruction_batches": batches,
        "n_eval_sparsity_variance_batches": batches,
        "dataset": e.dataset,
        "context_size": e.context_length,
        **dict.fromkeys(
            (
                "compute_kl",
                "compute_ce_loss",
                "compute_l2_norms",
                "compute_sparsity_metrics",
                "compute_variance_metrics",
                "compute_featurewise_density_statistics",
                "compute_featurewise_weight_based_metrics",
            ),
            True,
        ),
        "exclude_special_tokens_from_reconstruction": e.mask_special_tokens,
        "verbose": False,
    }
    metrics = {category: {key: _number(core[key]) for key in keys} for category, keys in CORE_CATEGORIES.items()}
    columns = {field_name: details[key].double().tolist() for key, field_name in LATENT_FIELDS.items()}
    latents = [
        {"index": i, **{f: _number(values[i], FLOAT_DIGITS) for f, values in columns.items()}}
        for i in range(result.sae.d_sae)
    ]
    return _document("core", config, metrics, latents, result, sae_cfg, name)


def absorption_document(
    result: EvalResult, details: Mapping[str, torch.Tensor], sae_cfg: Mapping, name: str
) -> tuple[dict | None, str | None]:
    """(SAEBench's AbsorptionEvalOutput as a dictionary, None) or (None, why SAEBench would write no file).

    The file holds SAEBench's estimator, `absorption_fraction_saebench` (the saebench-0.6 probe schedule over
    the result's word splits), never the converged headline. Its rows are that schedule's per-letter rows,
    one definition (absorption/aggregate.py: SAEBench's row over the true positives of every split), listed
    for the letters with a probe true positive as SAEBench lists them; each rate is its integer count over
    the true positives, and every mean and standard deviation is over the rows, so the file agrees with
    itself and its mean with the result."""
    key = "absorption_fraction_saebench"
    if result.metrics.get(key) is None:
        reason = result.not_measured.get(key, "absorption was not measured")
        return None, f"no absorption file: SAEBench's estimator was not measured ({reason})"
    prefix = "absorption_" if result.eval.absorption_probes == "saebench-0.6" else "absorption_saebench_"
    per_letter = {k[len(prefix) :]: v.double() for k, v in details.items() if k.startswith(prefix)}
    needed = ("absorption_fraction", "num_full_absorption", "num_probe_true_positives", "num_split_features")
    if any(name not in per_letter for name in needed):
        raise SaeHealthError(
            f"{result.sae.path}: the saved details lack the saebench-0.6 schedule's per-letter absorption: "
            "re-run with --force."
        )
    true_positives = per_letter["num_probe_true_positives"]
    rows = [i for i in range(len(LETTERS)) if float(true_positives[i]) > 0]  # NaN (not scored) compares False
    if len(rows) < 2:
        return None, f"no absorption file: {len(rows)} letter(s) scored, SAEBench's standard deviations need 2"
    letters = []
    for i in rows:
        tp, full = int(true_positives[i]), int(per_letter["num_full_absorption"][i])
        letters.append(
            {
                "first_letter": LETTERS[i],
                "mean_absorption_fraction": float(per_letter["absorption_fraction"][i]),
                "full_absorption_rate": full / tp,
                "num_full_absorption": full,
                "num_probe_true_positives": tp,
                # SAEBench's row holds one run's count of main latents; over several splits, their mean, rounded.
                "num_split_features": round(float(per_letter["num_split_features"][i])),
            }
        )
    metrics = {"mean": _row_means(letters)}
    unstructured = {
        "estimator": "saebench-0.6 probe schedule",
        "word_splits": result.eval.absorption_splits,
        "absorption_fraction_saebench": result.metrics[key],
        "absorption_fraction_saebench_standard_error": result.uncertainty.get(key),
        "rows": "per letter, SAEBench's row over the probe true positives of every word split (sums divided once)",
    }
    document = _document("absorption_first_letter", _absorption_config(result), metrics, letters, result, sae_cfg, name)
    document["eval_result_unstructured"]["saehealth"]["absorption"] = unstructured
    return document, None


def _row_means(letters: list[dict]) -> dict[str, float]:
    """SAEBench's eval_result_metrics.mean: means and standard deviations over the per-letter rows."""

    def column(field_name: str) -> list[float]:
        return [float(letter[field_name]) for letter in letters]

    return {
        "mean_absorption_fraction_score": statistics.fmean(column("mean_absorption_fraction")),
        "mean_full_absorption_score": statistics.fmean(column("full_absorption_rate")),
        "mean_num_split_features": statistics.fmean(column("num_split_features")),
        "std_dev_absorption_fraction_score": statistics.stdev(column("mean_absorption_fraction")),
        "std_dev_full_absorption_score": statistics.stdev(column("full_absorption_rate")),
        "std_dev_num_split_features": statistics.stdev(column("num_split_features")),
    }


def _absorption_config(result: EvalResult) -> dict:
    """SAEBench's AbsorptionEvalConfig fields, as the computation behind the file's numbers ran them: its
    probe schedule (epochs, batch size, L1 decay) is saebench-0.6's. `prompt_token_pos` is left out: saehealth
    builds prompts from token ids and reads the word's own token."""
    from saehealth.absorption import words
    from saehealth.absorption.probes import L1_PROBE
    from saehealth.absorption.scoring import Thresholds

    s = Thresholds()
    return {
        "model_name": result.eval.model,
        "random_seed": result.eval.seed,
        "f1_jump_threshold": s.f1_jump,
        "max_k_value": s.max_k,
        "prompt_template": words.PROMPT_TEMPLATE,
        "llm_dtype": result.provenance.dtype,
        "k_sparse_probe_l1_decay": L1_PROBE.l1,
        "k_sparse_probe_batch_size": L1_PROBE.batch_size,
        "k_sparse_probe_num_epochs": L1_PROBE.epochs,
        "min_GT_probe_f1": s.min_probe_f1,
        "min_feats_for_eval": int(result.request.get("absorption_min_letters") or 20),
    }


def _document(
    eval_type: str, config: dict, metrics: dict, details: list, result: EvalResult, sae_cfg: Mapping, name: str
) -> dict:
    """The fields of SAEBench's BaseEvalOutput, in its order."""
    started = datetime.fromisoformat(result.provenance.started_at)
    identity = f"saehealth:{eval_type}:{name}:{result.request.get('sae_weights')}:{result.provenance.started_at}"
    return {
        "eval_type_id": eval_type,
        "eval_config": config,
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, identity)),
        "datetime_epoch_millis": int(started.timestamp() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": f"none: computed by saehealth {result.provenance.saehealth} "
        f"with SAEBench {SAEBENCH_VERSION}'s definitions",
        "sae_lens_id": CUSTOM_SAE_ID,
        "sae_lens_release_id": name,
        "sae_lens_version": result.provenance.sae_lens,
        "sae_cfg_dict": _sae_cfg_dict(sae_cfg, result.sae.hook_name),
        "eval_result_unstructured": {
            "saehealth": {
                "sae_path": result.sae.path,
                "source_library": result.sae.source_library,
                "hook_name": result.sae.hook_name,
                "tokens_scored": result.eval.tokens_scored,
                "n_sequences": result.eval.n_sequences,
            }
        },
    }


def _sae_cfg_dict(sae_cfg: Mapping, hook_name: str) -> dict:
    """The SAE's config as SAEBench writes it: its `_standardize_sae_cfg` gives every SAE a `hook_layer`, the
    first number in the hook name, which SAELens 6 configs (hook in `metadata`) lack; it lands in `metadata`
    there, at the top level of an older, flat config."""
    cfg = dict(sae_cfg)
    number = re.search(r"\d+", hook_name)
    layer = int(number.group(0)) if number else None
    if isinstance(cfg.get("metadata"), Mapping):
        cfg["metadata"] = dict(cfg["metadata"])
        if cfg["metadata"].get("hook_layer") is None:
            cfg["metadata"]["hook_layer"] = layer
    elif cfg.get("hook_layer") is None:
        cfg["hook_layer"] = layer
    return cfg


def _number(value: Any, digits: int | None = None) -> float | int:
    """A JSON number as SAEBench writes it: NaN and missing (0/0) values become -1."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return -1
    if isinstance(value, bool) or isinstance(value, int):
        return value
    return round(float(value), digits) if digits is not None else float(value)
