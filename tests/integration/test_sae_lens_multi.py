"""Folders of several SAELens SAEs, as SAELens' multi-SAE runner writes them, trained for real on the built-in model."""

from __future__ import annotations

import json

import pytest

import saehealth
from saehealth.cli import main
from saehealth.compare import compare
from saehealth.data import load_dataset
from saehealth.loading import detect_format, load_checkpoint, load_sae
from saehealth.result import load_result

HOOKS = {"k16": "blocks.0.hook_resid_post", "k32": "blocks.1.hook_resid_post"}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, builtin_model):
    """(output folder, training checkpoint folder) of a two-SAE MultiSAETrainingRunner run."""
    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    root = tmp_path_factory.mktemp("multi")
    cfg = MultiSAETrainingRunnerConfig(
        saes={name: TopKTrainingSAEConfig(d_in=128, d_sae=256, k=int(name[1:])) for name in HOOKS},
        hook_names=HOOKS,
        model_name=saehealth.BUILTIN_MODEL,
        dataset_path=saehealth.BUILTIN_DATASET,
        streaming=False,
        training_tokens=20_480,
        train_batch_size_tokens=1024,
        store_batch_size_prompts=16,
        n_batches_in_buffer=8,
        context_size=128,
        n_checkpoints=1,
        output_path=str(root / "out"),
        checkpoint_path=str(root / "checkpoints"),
        logger=LoggingConfig(log_to_wandb=False),
    )
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "train")
    MultiSAETrainingRunner(cfg, override_dataset=dataset, override_model=builtin_model).run()
    (checkpoint,) = [p.parent for p in (root / "checkpoints").glob("*/*/runner_cfg.json")]
    return root / "out", checkpoint


def test_the_output_folder_loads_as_its_members(multi_run):
    out, _ = multi_run
    assert detect_format(out) == "sae_lens_multi"
    members = load_checkpoint(out)
    assert [m.hook_name for m in members] == list(HOOKS.values())
    assert [m.path for m in members] == [str(out / name) for name in HOOKS]
    assert members[0].training["training_tokens"] == 20_480  # from the run's runner_cfg.json
    assert members[1].model_from_pretrained_kwargs == {"center_writing_weights": False}
    assert load_checkpoint(out, hook=HOOKS["k32"]).path == str(out / "k32")
    assert load_sae(out, select="k16").cfg.k == 16
    with pytest.raises(Exception, match="holds 2 SAEs"):
        load_sae(out)


def test_a_training_checkpoint_of_the_run_loads_as_training_checkpoints(multi_run):
    _, checkpoint = multi_run
    members = load_checkpoint(checkpoint)
    assert [m.format for m in members] == ["sae_lens_checkpoint"] * 2
    assert [m.sae.cfg.k for m in members] == [16, 32]


def test_eval_takes_the_whole_run_or_a_selected_member_and_compare_takes_them_all(multi_run, tmp_path):
    out, _ = multi_run
    common = ["--tokens", "1024", "--skip", "absorption", "--skip", "geometry"]
    main(["eval", "--sae-path", str(out), "--out", str(tmp_path / "run"), *common])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [(row["name"], row["hook"]) for row in run["saes"]] == list(zip(HOOKS, HOOKS.values(), strict=True))
    assert (tmp_path / "run" / "run_report.md").is_file()
    main(["eval", "--sae-path", str(out), "--select", "k32", "--out", str(tmp_path / "one"), *common])
    assert load_result(tmp_path / "one").sae.hook_name == HOOKS["k32"]
    comparison = compare([str(out)], n_tokens=1024, skip=("absorption", "geometry"), out=tmp_path / "cmp")
    assert [e.name for e in comparison.entries] == ["k16", "k32"]
    assert [e.result.sae.hook_name for e in comparison.entries] == list(HOOKS.values())
