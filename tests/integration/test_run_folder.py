"""`saehealth eval` of a run folder: SAEs at several hooks of the built-in model scored in one pass, each result
equal to its own one-SAE evaluation, with a run report ordered by layer."""

from __future__ import annotations

import json

import pytest
import torch

import saehealth
from saehealth import sae_scorer, scoring
from saehealth.cli import main
from saehealth.evaluation import evaluate
from saehealth.result import METRIC_KEYS, load_result
from tests.conftest import write_standard_sae

TOKENS = 2048  # 16 sequences of 128
D_IN, D_SAE = 128, 256
# Residual (shared zero ablation), mlp_out (additive splice), in-block (restarted block) and the model's input.
HOOKS = {
    "resid_pre_0": "blocks.0.hook_resid_pre",
    "resid_post_0": "blocks.0.hook_resid_post",
    "mlp_out_1": "blocks.1.hook_mlp_out",
    "resid_post_1": "blocks.1.hook_resid_post",
    "attn_out_1": "blocks.1.hook_attn_out",
    "embed": "hook_embed",
}
COMMON = ["--tokens", str(TOKENS), "--skip", "absorption"]


def random_sae(folder, hook_name, seed, model_name=None):
    """A SAELens StandardSAE with tied random unit-norm rows and a negative bias: sparse and imperfect."""
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_enc = torch.full((D_SAE,), -0.5)
    return write_standard_sae(
        folder, W_dec.T.contiguous(), b_enc, W_dec, torch.zeros(D_IN), hook_name=hook_name, model_name=model_name
    )


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    for seed, (name, hook) in enumerate(HOOKS.items()):
        random_sae(root / name, hook, seed)
    return root


@pytest.fixture(scope="module")
def evaluated(run_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "run"
    main(["eval", "--sae-path", str(run_folder), "--out", str(out), *COMMON])
    return out


def test_every_sae_equals_its_own_evaluation(run_folder, evaluated, tmp_path):
    for name in HOOKS:
        together = load_result(evaluated / name)
        alone = evaluate(run_folder / name, n_tokens=TOKENS, skip=("absorption",), out=tmp_path / name)
        assert together.eval == alone.eval
        assert together.sae.hook_name == alone.sae.hook_name
        for key in METRIC_KEYS:
            if alone.metrics[key] is None:
                assert together.metrics[key] is None, key
            else:
                assert together.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-6, abs=1e-9), (name, key)
        for key, se in alone.uncertainty.items():
            assert together.uncertainty[key] == pytest.approx(se, rel=1e-6, abs=1e-12), (name, key)
        assert together.metrics["loss_recovered"] < 0.999  # imperfect SAEs: the comparison says something


def test_the_run_report_orders_the_saes_by_layer(evaluated):
    run = json.loads((evaluated / "run.json").read_text())
    assert run["view"] == "run" and run["identical_tokens"] is True
    rows = [(row["layer"], row["hook_type"], row["name"]) for row in run["saes"]]
    assert rows == [  # by depth: within a layer resid_pre, attention, MLP, resid_post
        (None, "hook_embed", "embed"),
        (0, "hook_resid_pre", "resid_pre_0"),
        (0, "hook_resid_post", "resid_post_0"),
        (1, "hook_attn_out", "attn_out_1"),
        (1, "hook_mlp_out", "mlp_out_1"),
        (1, "hook_resid_post", "resid_post_1"),
    ]
    assert all("dense_fraction" in row["metrics"] for row in run["saes"])
    markdown = (evaluated / "run_report.md").read_text()
    assert "| SAE | layer | hook | d_sae |" in markdown
    assert "](resid_post_1/report.md)" in markdown
    assert (evaluated / "metrics_by_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in HOOKS:
        assert (evaluated / name / "report.md").is_file()


def test_select_picks_members_and_the_terminal_shows_the_table(run_folder, tmp_path, capsys):
    main(["eval", "--sae-path", str(run_folder), "--select", "resid_*", "--out", str(tmp_path / "o"), *COMMON])
    shown = capsys.readouterr().out
    assert "Scoring 3 SAEs at 3 hooks in one pass" in shown
    assert "1.resid_post" in shown.replace("\n", "").replace(" ", "") and "mlp_out" not in shown
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert [row["name"] for row in run["saes"]] == ["resid_pre_0", "resid_post_0", "resid_post_1"]


def test_a_run_folder_of_saes_at_one_hook_gets_its_run_report(tmp_path, capsys):
    """Checkpoints of one training run (or a sweep's trainers) at one hook: one row and one point per SAE, in
    name order with numbers as numbers, frontier marks among them, the markdown and HTML reports written."""
    run = tmp_path / "checkpoints"
    for seed, name in enumerate(["step_20000", "step_100000", "step_3000"]):
        random_sae(run / name, "blocks.1.hook_resid_post", seed)
    out = tmp_path / "out"
    main(["eval", "--sae-path", str(run), "--out", str(out), *COMMON])
    shown = capsys.readouterr().out
    summary = json.loads((out / "run.json").read_text())
    assert [row["name"] for row in summary["saes"]] == ["step_3000", "step_20000", "step_100000"]
    assert summary["hooks"] == ["blocks.1.hook_resid_post"]
    assert summary["frontier_l0_loss_recovered"]  # rivals at one hook: some SAE is on the frontier
    assert all(row["on_frontier"] == (row["name"] in summary["frontier_l0_loss_recovered"]) for row in summary["saes"])
    markdown = (out / "run_report.md").read_text()
    assert "## Metrics of each SAE, grouped by hook" in markdown and "![Metrics of each SAE" in markdown
    for name in ("step_3000", "step_20000", "step_100000"):
        assert f"[{name}]({name}/report.md)" in markdown and name in shown
    for png in ("metrics_by_sae.png", "frontier_l0_loss_recovered.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "metrics_by_layer.png").exists()
    assert (out / "run_report.html").read_text().count('<img src="data:image/png') == 3


def test_chunked_encoding_gives_the_same_numbers(run_folder, tmp_path, monkeypatch):
    """Encoding a few positions at a time (the memory budget at 65k latents) changes nothing."""
    whole = evaluate(run_folder / "mlp_out_1", n_tokens=TOKENS, skip=("absorption",), out=tmp_path / "whole")
    monkeypatch.setattr(sae_scorer, "CHUNK_BYTES_CPU", D_SAE * 4 * sae_scorer._COPIES_PER_LATENT * 100)  # 100 tokens
    assert sae_scorer.chunk_tokens(D_SAE, "cpu") == 100
    chunked = evaluate(run_folder / "mlp_out_1", n_tokens=TOKENS, skip=("absorption",), out=tmp_path / "chunked")
    for key in METRIC_KEYS:
        if whole.metrics[key] is not None:
            assert chunked.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "holds no checkpoint"),
        ("run", ["--select", "layers.*"], "No SAE in .* matches 'layers.\\*'"),
        ("two_models", [], "trained on different models"),
    ],
)
def test_bad_run_folders(run_folder, tmp_path, capsys, setup, args, message):
    import re

    path = tmp_path / "input"
    if setup == "empty":
        path.mkdir()
    elif setup == "run":
        path = run_folder
    else:
        random_sae(path / "a", HOOKS["resid_post_0"], 0)
        random_sae(path / "b", HOOKS["resid_post_0"], 1, model_name="gpt2")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--sae-path", str(path), "--out", str(out), *args, *COMMON])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_wide_topk_saes_are_scored_sparse_with_the_same_numbers(builtin_model, monkeypatch):
    """From SPARSE_FROM_D_SAE latents on, a SAELens TopK SAE hands over sparse latents: same numbers as dense."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from saehealth.data import load_dataset, sequence_batches
    from saehealth.replay import splice_site

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=sae_scorer.SPARSE_FROM_D_SAE, k=32)).eval()
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    batches = list(sequence_batches(dataset, builtin_model.tokenizer, 128, 6, 3, 0))
    members = [(splice_site("blocks.0.hook_resid_post"), sae)]
    (sparse,) = scoring.score_batches(builtin_model, members, batches)
    assert type(sae.activation_fn).__name__ == "TopK" and not sae.activation_fn.use_sparse_activations  # restored
    monkeypatch.setattr(sae_scorer, "SPARSE_FROM_D_SAE", 10**9)
    (dense,) = scoring.score_batches(builtin_model, members, batches)
    for key, value in dense.metrics.items():
        if value is None:  # e.g. the pathological check, off in score_batches by default
            assert sparse.metrics[key] is None, key
            continue
        assert sparse.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert torch.equal(sparse.details["firing_counts"], dense.details["firing_counts"])
    assert torch.equal(sparse.details["l0_histogram"], dense.details["l0_histogram"])
