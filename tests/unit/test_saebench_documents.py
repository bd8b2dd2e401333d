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
    result = make_result(metrics, d_sae=D_SAE)
    result.saebench_core = {key: 0.5 for key in CORE_KEYS}
    result.saebench_core.update(kl_div_score=None, total_tokens_eval_reconstruction=2048)  # None: 0/0 on this data
    result.request = {"sae_weights": "abc", "absorption_min_letters": 20, "skip": []}
    details = {key: torch.linspace(0.1, 0.6, D_SAE, dtype=torch.float64) for key in LATENT_FIELDS}
    details["consistent_activation_heuristic"][2] = math.nan  # a latent that never fired
    fraction = torch.full((26,), math.nan, dtype=torch.float64)
    fraction[:3] = torch.tensor([0.1, 0.2, 0.6], dtype=torch.float64)
    details.update(
        absorption_absorption_fraction=fraction,
        absorption_full_absorption_rate=fraction / 2,
        absorption_num_full_absorption=torch.where(fraction.isnan(), math.nan, 1.0),
        absorption_num_probe_true_positives=torch.where(fraction.isnan(), math.nan, 10.0),
        absorption_num_split_features=torch.where(fraction.isnan(), math.nan, torch.arange(26.0)),
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


def test_absorption_document_takes_the_results_numbers():
    result, details = _result_and_details(
        absorption_fraction=0.3, full_absorption_rate=0.15, mean_num_split_features=1.0
    )
    doc, skipped = absorption_document(result, details, {}, "sae")
    assert skipped is None and doc["eval_type_id"] == "absorption_first_letter"
    assert [row["first_letter"] for row in doc["eval_result_details"]] == ["A", "B", "C"]  # letters with a score
    assert doc["eval_result_details"][2] == {
        "first_letter": "C",
        "mean_absorption_fraction": 0.6,
        "full_absorption_rate": 0.3,
        "num_full_absorption": 1,
        "num_probe_true_positives": 10,
        "num_split_features": 2,
    }
    mean = doc["eval_result_metrics"]["mean"]
    assert (mean["mean_absorption_fraction_score"], mean["mean_num_split_features"]) == (0.3, 1.0)
    assert mean["std_dev_absorption_fraction_score"] == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))
    assert mean["std_dev_num_split_features"] == pytest.approx(1.0)
    assert doc["eval_config"]["min_feats_for_eval"] == 20 and "k_sparse_probe_num_epochs" not in doc["eval_config"]


def test_no_absorption_file_where_saebench_writes_none(tmp_path):
    result, details = _result_and_details(absorption_fraction=None)
    result.not_measured["absorption_fraction"] = "only 12 letters had probe F1 > 0.6 (minimum 20)"
    files = write_saebench_results(result, details, {}, tmp_path, "sae")
    assert [p.parent.name for p in files.paths] == ["core"]
    assert files.absorption_skipped == "no absorption file: only 12 letters had probe F1 > 0.6 (minimum 20)"
    result, details = _result_and_details()
    details["absorption_absorption_fraction"][1:] = math.nan
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
