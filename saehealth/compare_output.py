"""What `saehealth compare` (and `saehealth eval` of a run folder) writes beside each SAE's result folder: the
side-by-side report with its plots and the JSON summary (`write_comparison`), and the shared settings it records
(`comparison_settings`)."""

from __future__ import annotations

import json
import time

from saehealth.comparison import SUMMARY_JSON, ComparedSAE, Comparison, comparison_to_dict
from saehealth.config import EvalConfig


def write_comparison(comparison: Comparison, options: EvalConfig, started: float) -> None:
    """The side-by-side report with its plots and the JSON summary, staged and renamed into the folder together
    (each SAE's result folder was written whole when it was finished; a reused one gets its report again only
    when --thresholds changed its verdicts). `comparison.timing` gains reports_s and total_s (since `started`)."""
    from saehealth.output import staged
    from saehealth.report.compare_report import write_comparison_report
    from saehealth.result import RESULT_FILE, load_details
    from saehealth.result_folder import save_report_folder

    t0 = time.perf_counter()
    for entry in comparison.entries:
        if entry.reused and options.thresholds is not None:
            details, result_path = load_details(entry.folder, entry.result.sae.d_sae), entry.folder / RESULT_FILE
            save_report_folder(entry.folder, entry.result, details, result_path, html_latents=options.html_latents)
    summary = SUMMARY_JSON[comparison.view]
    with staged(comparison.out, "comparison", in_place=True) as staging:
        written = write_comparison_report(comparison, staging)
        comparison.files.update({key: comparison.out / path.name for key, path in written.items()})
        comparison.files["json"] = comparison.out / summary
        comparison.timing["reports_s"] = time.perf_counter() - t0
        comparison.timing["total_s"] = time.perf_counter() - started
        text = json.dumps(comparison_to_dict(comparison), indent=2, allow_nan=False) + "\n"
        (staging / summary).write_text(text)


def comparison_settings(entries: list[ComparedSAE], options: EvalConfig) -> dict:
    """The settings every SAE of the comparison was evaluated with, as the summary records them."""
    first = entries[0].result.eval
    return {
        "model": first.model,
        "dataset": first.dataset,
        "split": first.split,
        "context_length": first.context_length,
        "n_tokens": first.n_tokens,
        "tokens_scored": first.tokens_scored,
        "n_sequences": first.n_sequences,
        "seed": first.seed,
        "mask_special_tokens": first.mask_special_tokens,
        "requested_tokens": options.n_tokens,
        "thresholds": options.thresholds or "default",
        "skip": list(options.skip),
    }
