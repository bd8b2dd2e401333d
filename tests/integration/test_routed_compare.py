"""A routed SAE beside an ordinary one in `saehealth compare` on the built-in model: one shared clean forward, and
each SAE's numbers what `saehealth eval` gives for it alone on the same tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

import saehealth
from saehealth.cli import main
from saehealth.comparison_differences import NOT_COMPARABLE
from saehealth.result import load_result
from tests.conftest import random_sae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOOKS = "blocks.0.hook_resid_post,blocks.1.hook_resid_post"
D, M = 128, 256
COMMON = [
    "--model",
    saehealth.BUILTIN_MODEL,
    "--tokens",
    "512",
    "--skip",
    "geometry",
    "--skip",
    "absorption",
    "--examples",
    "4",
]


def _routed_checkpoint(tmp_path):
    """The authors' layout, k = 16 from the file name, a random router and tied random weights."""
    g = torch.Generator().manual_seed(1)
    decoder = torch.randn(D, M, generator=g)
    state = {
        "router.weight": torch.randn(2, D, generator=g),
        "sae.pre_bias": torch.zeros(D),
        "sae.latent_bias": torch.zeros(M),
        "sae.encoder.weight": decoder.T.clone(),
        "sae.decoder.weight": decoder / decoder.norm(dim=0, keepdim=True),
    }
    path = tmp_path / f"sum_hard_K16_tiny_train_{M}.pt"
    torch.save(state, path)
    return path


def _run(capsys, *args) -> tuple[int, str]:
    try:
        main([*args, "--quiet"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


def _assert_same_metrics(shared: dict, alone: dict, what: str) -> None:
    assert shared.keys() == alone.keys(), what
    for key, value in alone.items():
        if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            assert shared[key] == value, f"{what}: {key}"
        elif math.isnan(value):
            assert math.isnan(shared[key]), f"{what}: {key}"
        else:
            assert shared[key] == pytest.approx(value, rel=1e-6, abs=1e-9), f"{what}: {key}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the comparison folder, the routed SAE alone, the ordinary SAE alone), all on the same 512 tokens."""
    tmp_path = tmp_path_factory.mktemp("routed_compare")
    routed = _routed_checkpoint(tmp_path)
    ordinary = random_sae(tmp_path / "ordinary", hook_name="blocks.0.hook_resid_post")
    main(["compare", str(routed), str(ordinary), "--hook", HOOKS, *COMMON, "--out", str(tmp_path / "cmp"), "--quiet"])
    main(["eval", "--sae-path", str(routed), "--hook", HOOKS, *COMMON, "--out", str(tmp_path / "r"), "--quiet"])
    main(["eval", "--sae-path", str(ordinary), *COMMON, "--out", str(tmp_path / "o"), "--quiet"])
    return tmp_path / "cmp", load_result(tmp_path / "r" / "result.json"), load_result(tmp_path / "o" / "result.json")


def test_each_member_of_the_shared_pass_equals_its_eval_alone(runs):
    cmp, routed_alone, ordinary_alone = runs
    summary = json.loads((cmp / "comparison.json").read_text())
    folders = {entry["name"]: cmp / entry["name"] for entry in summary["saes"]}
    routed = load_result(next(f for name, f in folders.items() if name.startswith("sum_hard")) / "result.json")
    ordinary = load_result(folders["ordinary"] / "result.json")
    assert any("one pass shared with 1 other SAE" in note for note in routed.notes)
    assert routed.eval.tokens_scored == routed_alone.eval.tokens_scored == ordinary.eval.tokens_scored
    _assert_same_metrics(routed.metrics, routed_alone.metrics, "routed")
    _assert_same_metrics(ordinary.metrics, ordinary_alone.metrics, "ordinary")  # unchanged by the routed one
    assert routed.metrics["loss_recovered"] is not None and routed.metrics["kl_div_with_sae"] > 0
    # the routing section and the per-layer latent counts are the same as alone
    assert [layer["tokens"] for layer in routed.routing["layers"]] == [
        layer["tokens"] for layer in routed_alone.routing["layers"]
    ]
    assert routed.routing["norm_mse"] == pytest.approx(routed_alone.routing["norm_mse"], rel=1e-9)
    assert routed.routing["latent_layers"] == routed_alone.routing["latent_layers"]
    assert routed.routing["hooks"] == HOOKS.split(",") and ordinary.routing is None
    assert any("routed zero ablation" in note for note in routed.notes)
    assert routed.not_measured["absorption_fraction"] == routed_alone.not_measured["absorption_fraction"]


def test_the_zero_ablation_baselines_are_not_paired_with_a_routed_sae(runs):
    cmp = runs[0]
    differences = json.loads((cmp / "comparison.json").read_text())["differences"]
    (row,) = differences["rows"]
    for key in ("loss_recovered", "kl_div_score"):
        assert row[key]["difference"] is None and row[key]["reason"] == NOT_COMPARABLE
    for key in ("delta_ce", "explained_variance", "l0"):  # comparable: a paired difference with its SE
        assert row[key]["difference"] is not None and row[key]["se"] is not None
    assert "routed zero ablation" in (cmp / "comparison.md").read_text()


def test_replace_all_refuses_a_routed_sae_in_one_line(tmp_path, capsys):
    routed = _routed_checkpoint(tmp_path)
    ordinary = random_sae(tmp_path / "ordinary", hook_name="blocks.0.hook_resid_post")
    code, err = _run(capsys, "compare", str(routed), str(ordinary), "--hook", HOOKS, "--replace-all", *COMMON,
                     "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert code == 1 and len(err.splitlines()) == 1 and "routed SAE" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_routed_and_an_ordinary_sae_compared_on_two_torchrun_ranks(tmp_path):
    from tests.integration.test_torchrun import assert_same_numbers, single, torchrun

    routed = _routed_checkpoint(tmp_path)
    ordinary = random_sae(tmp_path / "ordinary", hook_name="blocks.0.hook_resid_post")
    args = ["compare", str(routed), str(ordinary), "--hook", HOOKS, *COMMON, "--tokens", "1024", "--device", "cpu"]
    together = torchrun(*args, "--out", str(tmp_path / "two"))
    assert together.returncode == 0, together.stderr[-2000:]
    alone = single(*args, "--out", str(tmp_path / "one"), "--quiet")
    assert alone.returncode == 0, alone.stderr[-2000:]
    for name in (routed.stem, "ordinary"):
        two, one = (
            load_result(tmp_path / "two" / name / "result.json"),
            load_result(tmp_path / "one" / name / "result.json"),
        )
        assert_same_numbers(two, one)
    two, one = (load_result(tmp_path / run / routed.stem / "result.json").routing for run in ("two", "one"))
    # (eval of a routed SAE is this pass with one member: its torchrun case is this one.)
    for a, b in zip(two["layers"], one["layers"], strict=True):
        assert a["tokens"] == b["tokens"] and a["dead_latents"] == b["dead_latents"]
        assert a["norm_mse"] == pytest.approx(b["norm_mse"], rel=1e-9)
    assert two["router_entropy"] == pytest.approx(one["router_entropy"], rel=1e-9)
    assert two["latent_layers"] == one["latent_layers"]


def test_the_clean_forward_runs_once_per_batch_for_every_sae(builtin_model, tmp_path, monkeypatch):
    """Counted on the model: a forward from token ids is a clean one (continuations start from residuals)."""
    from saehealth.data import load_dataset, sequence_batches
    from saehealth.loading import load_checkpoint
    from saehealth.replay import splice_site
    from saehealth.routed.passes import resolve_site
    from saehealth.scoring import score_batches

    routed = load_checkpoint(_routed_checkpoint(tmp_path), hook=HOOKS)
    ordinary = load_checkpoint(random_sae(tmp_path / "ordinary", hook_name="blocks.0.hook_resid_post"))
    site = resolve_site(routed.route, builtin_model, D)
    data = load_dataset("saehealth/pydoc-corpus", "validation")
    batches = list(sequence_batches(data, builtin_model.tokenizer, 64, 8, 4, 0))  # 2 batches of 4
    clean_forwards = []
    forward = type(builtin_model).forward

    def counting(self, inputs, *args, **kwargs):
        if not torch.is_floating_point(inputs):
            clean_forwards.append(inputs.shape)
        return forward(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(builtin_model), "forward", counting)
    shared = score_batches(
        builtin_model, [(site, routed.sae), (splice_site(ordinary.hook_name), ordinary.sae)], batches
    )
    assert len(clean_forwards) == 1 + len(batches)  # the reference sequence, then one per batch for both SAEs
    (alone,) = score_batches(builtin_model, [(site, routed.sae)], batches)
    _assert_same_metrics(shared[0].metrics, alone.metrics, "routed")
    assert shared[0].routing["layers"] == alone.routing["layers"] and shared[1].routing is None
