"""`--saebench-out` files validate against the JSON schemas SAEBench 0.6 ships in its wheel, and hold SAEBench's
own definitions: cross-checked on the built-in model against a plain forward pass computed as SAEBench's core
eval computes it (full logits, a replacement hook, KL over every kept position, its explained variance).

sae-bench cannot be installed beside saehealth (it pins numpy < 2 and datasets < 4), so the schemas are read
from its wheel: `.ci/run` downloads it (`pip download --no-deps sae-bench==0.6.0`) and names it in
SAEHEALTH_SAEBENCH_WHEEL; without that variable these tests are skipped, with it they must pass.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

import saehealth
from saehealth.data import load_dataset, sequence_batches, special_token_mask
from saehealth.loading import load_checkpoint
from saehealth.saebench.export import result_file_name
from tests.conftest import random_sae

WHEEL_ENV = "SAEHEALTH_SAEBENCH_WHEEL"
SCHEMAS = {
    "core": "sae_bench/evals/core/eval_output_schema_core.json",
    "absorption": "sae_bench/evals/absorption/eval_output_schema_absorption_first_letter.json",
}
HOOK = "blocks.0.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _validators() -> dict:
    """A jsonschema validator per SAEBench eval, from the schemas inside the sae-bench 0.6.0 wheel."""
    import jsonschema

    location = os.environ.get(WHEEL_ENV)
    if not location:
        pytest.skip(f"set {WHEEL_ENV} to the sae-bench 0.6.0 wheel (pip download --no-deps sae-bench==0.6.0)")
    path = Path(location)
    if path.is_dir():
        path = next(path.glob("sae_bench-0.6.0-*.whl"), path)
    if not path.is_file():
        pytest.fail(f"{WHEEL_ENV}={location} is not the sae-bench 0.6.0 wheel")
    validators = {}
    with zipfile.ZipFile(path) as wheel:
        for kind, member in SCHEMAS.items():
            schema = json.loads(wheel.read(member))
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validators[kind] = cls(schema)
    return validators


def _sae(path, seed=0):
    return random_sae(path, hook_name=HOOK, seed=seed, scale=0.15)


def _saebench_reference(model, sae, tokens):
    """SAEBench's core definitions on one batch, the way evals/core/main.py computes them."""
    mask = special_token_mask(tokens, model.tokenizer)

    def splice(act, hook):  # noqa: ARG001
        return torch.where(mask[..., None], sae.decode(sae.encode(act)), act)

    def zero(act, hook):  # noqa: ARG001
        return torch.zeros_like(act)

    with torch.no_grad():
        clean = model(tokens)
        spliced = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice)])
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, zero)])
        x = model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK][mask].double()
        x_hat = sae.decode(sae.encode(x.float())).double()

    def kl(logits):
        p = torch.softmax(clean.double(), -1)
        return (p * (torch.log_softmax(clean.double(), -1) - torch.log_softmax(logits.double(), -1))).sum(-1)[mask]

    kl_sae, kl_zero = kl(spliced).mean(), kl(ablated).mean()
    rss = (x - x_hat).pow(2).sum(-1)
    mean_sq = x.pow(2).sum(-1).mean()
    return {
        "kl_div_with_sae": float(kl_sae),
        "kl_div_score": float((kl_zero - kl_sae) / kl_zero),
        "explained_variance": float(1 - rss.mean() / (mean_sq - x.pow(2).mean(0).mean() ** 2)),
        "mse": float((rss / mask.sum()).mean()),
    }


@pytest.mark.slow
def test_eval_files_validate_and_hold_saebench_definitions(tmp_path, builtin_model):
    validators = _validators()
    path = _sae(tmp_path / "my_sae")
    # SAEBench's probe schedule passes fewer letters on the built-in model than the default minimum of 20.
    result = saehealth.evaluate(
        str(path), n_tokens=2048, out=tmp_path / "out", saebench_out=tmp_path / "sb", absorption_min_letters=10
    )
    assert result.metrics["absorption_fraction_saebench"] is not None
    documents = {}
    for kind, validator in validators.items():
        document = json.loads((tmp_path / "sb" / kind / result_file_name("out")).read_text())
        validator.validate(document)
        documents[kind] = document
    assert len(documents["core"]["eval_result_details"]) == 256
    # The absorption file holds SAEBench's estimator (the saebench-0.6 schedule), not the converged headline.
    assert documents["absorption"]["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] == pytest.approx(
        result.metrics["absorption_fraction_saebench"]
    )

    (tokens,) = sequence_batches(
        load_dataset(saehealth.BUILTIN_DATASET, "validation"), builtin_model.tokenizer, 128, 16, 16, 42
    )
    expected = _saebench_reference(builtin_model, load_checkpoint(str(path)).sae, tokens)
    metrics = documents["core"]["eval_result_metrics"]
    exported = {**metrics["model_behavior_preservation"], **metrics["reconstruction_quality"]}
    for key, value in expected.items():
        assert exported[key] == pytest.approx(value, rel=1e-4), key
    # saehealth's own KL leaves each sequence's last position out; SAEBench's counts it.
    assert result.metrics["kl_div_with_sae"] != pytest.approx(exported["kl_div_with_sae"], rel=1e-7)


def test_compare_writes_a_core_file_per_sae(tmp_path):
    from saehealth.compare import compare

    validators = _validators()
    paths = [str(_sae(tmp_path / name, seed=i)) for i, name in enumerate(("a", "b"))]
    comparison = compare(paths, n_tokens=1024, skip=("absorption",), out=tmp_path / "cmp", saebench_out=tmp_path / "sb")
    assert sorted(p.name for p in (tmp_path / "sb" / "core").iterdir()) == [
        result_file_name(entry.name) for entry in comparison.entries
    ]
    assert not (tmp_path / "sb" / "absorption").exists()  # skipped: SAEBench would write none either
    for file in (tmp_path / "sb" / "core").iterdir():
        validators["core"].validate(json.loads(file.read_text()))
