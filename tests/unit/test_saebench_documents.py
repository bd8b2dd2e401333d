"""SAEBench result files from a result and its details: layout, names, SAEBench's conventions, refusals.
(Validation against SAEBench's own JSON schemas is tests/acceptance/test_saebench_schemas.py.)"""

import json
import math
import statistics
from dataclasses import replace

import pytest
import torch

from saehealth.errors import SaeHealthError
from saehealth.saebench.core import CORE_CATEGORIES, CORE_KEYS
from saehealth.saebench.export import LATENT_FIELDS, absorption_document, core_document, write_saebench_results
from tests.unit.report_factory import make_result

D_SAE = 6


def _result_and_details(**metrics):
    """A result whose saebench-0.6 rows are A, B, C (pooled over splits: 10, 20, 40 true positives) and D (scored,
    no true positive: SAEBench lists no row for it); the converged rows differ, so the file must not read them."""
    result = make_result(metrics, d_sae=D_SAE)
    result.saebench_core = {key: 0.5 for key in CORE_KEYS}
    result.saebench_core.update(kl_div_score=None, total_tokens_eval_reconstruction=2048)  # None: 0/0 on this data
    result.request = {"sae_weights": "abc", "absorption_min_letters": 20, "skip": []}
    details = {key: torch.linspace(0.1, 0.6, D_SAE, dtype=torch.float64) for key in LATENT_FIELDS}
    details["consistent_activation_heuristic"][2] = math.nan  # a latent that never fired
    nan = torch.full((26,), math.nan, dtype=torch.float64)

    def letters(*values):
        column = nan.clone()
        column[: len(values)] = torch.tensor(values, dtype=torch.float64)
        return column

    details.update(
        absorption_absorption_fraction=letters(0.9, 0.9, 0.9),  # the converged schedule's: never exported
        absorption_saebench_absorption_fraction=letters(0.1, 0.2, 0.6, math.nan),
        absorption_saebench_full_absorption_rate=letters(0.1, 0.15, 0.5, math.nan),
        absorption_saebench_num_full_absorption=letters(1, 3, 20, 0),
        absorption_saebench_num_probe_true_positives=letters(10, 20, 40, 0),
        absorption_saebench_num_split_features=letters(1.0, 1.4, 2.6, 1.0),  # means over splits
    )
    return result, details


def test_files_are_named_and_laid_out_as_saebench_does(tmp_path):
    result, details = _result_and_details()
    files = write_saebench_results(result, details, {"architecture": "standard", "d_sae": D_SAE}, tmp_path, "my/sae")
    assert [p.relative_to(tmp_path).as_posix() for p in files.paths] == [
        "core/my_sae_custom_sae_eval_results.json",
        "absorption/my_sae_custom_sae_eval_results.json",
    ]
    core = json.loads(files.paths[0].read_text())
    assert core["eval_type_id"] == "core" and core["sae_lens_id"] == "custom_sae"
    assert core["sae_lens_release_id"] == "my/sae" and core["sae_cfg_dict"]["architecture"] == "standard"
    assert core["sae_cfg_dict"]["hook_layer"] == 0  # the block of blocks.0.hook_resid_post, as SAEBench writes it
    saelens6 = core_document(result, details, {"metadata": {"hook_name": "blocks.0.hook_resid_post"}}, "sae")
    assert saelens6["sae_cfg_dict"]["metadata"]["hook_layer"] == 0 and "hook_layer" not in saelens6["sae_cfg_dict"]
    assert core["datetime_epoch_millis"] == 1735689600000  # the result's start time
    assert list(core["eval_result_metrics"]) == list(CORE_CATEGORIES)


def test_core_document_follows_saebench_conventions():
    result, details = _result_and_details()
    core = core_document(result, details, {}, "sae")
    metrics = core["eval_result_metrics"]
    assert metrics["model_behavior_preservation"]["kl_div_score"] == -1  # SAEBench writes NaN (0/0) as -1
    assert metrics["token_stats"]["total_tokens_eval_reconstruction"] == 2048
    assert core["eval_config"]["n_eval_reconstruction_batches"] == math.ceil(result.eval.n_sequences / 16)
    assert core["eval_config"]["exclude_special_tokens_from_reconstruction"] is True
    latents = core["eval_result_details"]
    assert [latent["index"] for latent in latents] == list(range(D_SAE))
    assert latents[2]["consistent_activation_heuristic"] == -1
    assert latents[1]["max_encoder_cosine_sim"] == pytest.approx(0.2)
    assert set(latents[0]) == {"index", *LATENT_FIELDS.values()}
    assert core_document(result, details, {}, "sae")["eval_id"] == core["eval_id"]  # stable for one result


def test_absorption_document_holds_saebench_rows_and_their_means():
    result, details = _result_and_details(absorption_fraction_saebench=0.3)
    doc, skipped = absorption_document(result, details, {}, "sae")
    assert skipped is None and doc["eval_type_id"] == "absorption_first_letter"
    rows = doc["eval_result_details"]
    assert [row["first_letter"] for row in rows] == ["A", "B", "C"]  # letters with a probe true positive
    assert rows[2] == {
        "first_letter": "C",
        "mean_absorption_fraction": 0.6,
        "full_absorption_rate": 0.5,  # 20 of 40 true positives
        "num_full_absorption": 20,
        "num_probe_true_positives": 40,
        "num_split_features": 3,  # 2.6 over the splits, rounded: SAEBench's field is a count
    }
    for row in rows:  # every rate is its count over the true positives, as SAEBench defines it
        assert row["full_absorption_rate"] == row["num_full_absorption"] / row["num_probe_true_positives"]
    mean = doc["eval_result_metrics"]["mean"]
    # The means, recomputed from the rows as SAEBench averages them.
    assert mean["mean_absorption_fraction_score"] == pytest.approx(0.3, abs=1e-15)
    assert mean["mean_absorption_fraction_score"] == pytest.approx(statistics.fmean([0.1, 0.2, 0.6]), abs=1e-15)
    assert mean["mean_full_absorption_score"] == pytest.approx(statistics.fmean([0.1, 0.15, 0.5]), abs=1e-15)
    assert mean["mean_num_split_features"] == pytest.approx(5 / 3)  # rows 1, 1, 3
    assert mean["std_dev_absorption_fraction_score"] == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))
    assert mean["std_dev_full_absorption_score"] == pytest.approx(statistics.stdev([0.1, 0.15, 0.5]))
    assert mean["std_dev_num_split_features"] == pytest.approx(statistics.stdev([1, 1, 3]))
    config = doc["eval_config"]
    assert config["min_feats_for_eval"] == 20
    assert (config["k_sparse_probe_num_epochs"], config["k_sparse_probe_batch_size"]) == (50, 4096)
    said = doc["eval_result_unstructured"]["saehealth"]["absorption"]
    assert said["estimator"] == "saebench-0.6 probe schedule" and said["word_splits"] == 5
    assert said["absorption_fraction_saebench"] == 0.3


def test_a_saebench_schedule_headline_exports_its_own_rows():
    result, details = _result_and_details(absorption_fraction_saebench=0.3)
    result.eval.absorption_probes = "saebench-0.6"  # then the headline arrays are SAEBench's estimator's
    for name in ("absorption_fraction", "num_full_absorption", "num_probe_true_positives", "num_split_features"):
        details[f"absorption_{name}"] = details.pop(f"absorption_saebench_{name}")
    doc, _ = absorption_document(result, details, {}, "sae")
    assert [row["num_full_absorption"] for row in doc["eval_result_details"]] == [1, 3, 20]


def test_no_absorption_file_where_saebench_writes_none(tmp_path):
    result, details = _result_and_details(absorption_fraction_saebench=None)
    result.not_measured["absorption_fraction_saebench"] = "only 12 letters had probe F1 > 0.6 (minimum 20)"
    files = write_saebench_results(result, details, {}, tmp_path, "sae")
    assert [p.parent.name for p in files.paths] == ["core"]
    assert files.absorption_skipped == (
        "no absorption file: SAEBench's estimator was not measured (only 12 letters had probe F1 > 0.6 (minimum 20))"
    )
    result, details = _result_and_details()
    details["absorption_saebench_num_probe_true_positives"][1:] = 0
    assert absorption_document(result, details, {}, "sae") == (
        None,
        "no absorption file: 1 letter(s) scored, SAEBench's standard deviations need 2",
    )


def test_results_that_cannot_be_exported_write_nothing(tmp_path):
    result, details = _result_and_details()
    cache = replace(result, eval=replace(result.eval, activations="minsae"))
    skipped = replace(result, request={**result.request, "skip": ["geometry"]})
    old = replace(result, saebench_core={})
    for bad, message in ((cache, "requires loss and KL"), (skipped, "drop --skip geometry"), (old, "--force")):
        with pytest.raises(SaeHealthError, match=message):
            write_saebench_results(bad, details, {}, tmp_path, "sae")
    del details["encoder_norm"]
    with pytest.raises(SaeHealthError, match="encoder_norm"):
        write_saebench_results(result, details, {}, tmp_path, "sae")
    assert not any(tmp_path.iterdir())
