"""torchrun scale-out on CPU with the gloo backend: two processes, launched by `torch.distributed.run`, give the
numbers of one process on the same tokens; a failure on one rank ends the job with one line and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saehealth.latents.store import LATENTS_FILE
from saehealth.result import METRIC_KEYS, load_result
from tests.integration.test_run_folder import random_sae

TOKENS = 2048
COMMON = ["--tokens", str(TOKENS), "--skip", "absorption", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[2]


def torchrun(*args: str, processes: int = 2, script: str | None = None) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m saehealth ARGS` (or a script)."""
    target = [script] if script else ["-m", "saehealth"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([*command, *target, *args], capture_output=True, text=True, env=env, timeout=600)


def single(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "saehealth", *args], capture_output=True, text=True, env=env)


def assert_same_numbers(together, alone) -> None:
    assert together.eval == alone.eval  # the same tokens, sequences and settings
    for key in METRIC_KEYS:
        if alone.metrics[key] is None:
            assert together.metrics[key] is None, key
        else:
            assert together.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-6, abs=1e-9), key
    for key, se in alone.uncertainty.items():
        assert together.uncertainty[key] == pytest.approx(se, rel=1e-6), key
    by_position = together.diagnostics["by_position"]
    for key, values in alone.diagnostics["by_position"].items():  # the diagnostics merge exactly too
        for mine, theirs in zip(by_position[key], values, strict=True) if isinstance(values, list) else []:
            same = mine == theirs or pytest.approx(theirs, rel=1e-6, abs=1e-9) == mine
            assert same, key
    assert together.diagnostics["dense_kinds"] == alone.diagnostics["dense_kinds"]
    if alone.diagnostics["token_explained"] is None:  # not measured (an activation cache keeps no token ids)
        assert together.diagnostics["token_explained"] is None
        return
    for key, value in alone.diagnostics["token_explained"].items():
        assert together.diagnostics["token_explained"][key] == pytest.approx(value, rel=1e-6), key


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    random_sae(root / "run" / "resid_post_0", "blocks.0.hook_resid_post", 0)
    random_sae(root / "run" / "mlp_out_1", "blocks.1.hook_mlp_out", 1)
    random_sae(root / "run" / "attn_out_0", "blocks.0.hook_attn_out", 2)
    return root


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one_process(saes, tmp_path):
    sae = saes / "run" / "resid_post_0"
    done = torchrun("eval", "--sae-path", str(sae), "--out", str(tmp_path / "two"), *COMMON)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Result:") == 1  # rank 0 alone prints
    assert single("eval", "--sae-path", str(sae), "--out", str(tmp_path / "one"), "-q", *COMMON).returncode == 0
    together, alone = load_result(tmp_path / "two"), load_result(tmp_path / "one")
    assert_same_numbers(together, alone)
    assert together.provenance.world_size == 2 and alone.provenance.world_size == 1
    assert together.provenance.device == "cpu"
    # The latent examples too: the ranks' top activations and samples merge into those of one pass.
    from safetensors.torch import load_file

    two, one = load_file(str(tmp_path / "two" / LATENTS_FILE)), load_file(str(tmp_path / "one" / LATENTS_FILE))
    assert two.keys() == one.keys()
    for name, array in one.items():
        assert torch.equal(array.float().nan_to_num(-7.0), two[name].float().nan_to_num(-7.0)), name


@pytest.mark.slow
def test_a_run_folder_on_two_ranks(saes, tmp_path):
    done = torchrun("eval", "--sae-path", str(saes / "run"), "--out", str(tmp_path / "two"), *COMMON)
    assert done.returncode == 0, done.stderr
    assert (
        single("eval", "--sae-path", str(saes / "run"), "--out", str(tmp_path / "one"), "-q", *COMMON).returncode == 0
    )
    names = [row["name"] for row in json.loads((tmp_path / "two" / "run.json").read_text())["saes"]]
    assert names == ["attn_out_0", "resid_post_0", "mlp_out_1"]
    for name in names:
        assert_same_numbers(load_result(tmp_path / "two" / name), load_result(tmp_path / "one" / name))


def _our_lines(stderr: str) -> list[str]:
    """What saehealth printed to stderr (torchrun adds its own banner and failure summary)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_more_ranks_than_sequences_is_one_line_and_nothing_written(saes, tmp_path):
    sae = saes / "run" / "resid_post_0"
    done = torchrun("eval", "--sae-path", str(sae), "--num-samples", "1", "--out", str(tmp_path / "o"), *COMMON[2:])
    assert done.returncode != 0
    assert _our_lines(done.stderr) == [
        "error: 2 torchrun processes for 1 sequence(s): evaluate more tokens (--tokens) or run with at most 1 "
        "processes."
    ]
    assert "Traceback" not in done.stderr.split("failed (exitcode")[0]  # none of ours, before torchrun's summary
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_broken_checkpoint_on_one_rank_ends_the_job(saes, tmp_path):
    """Rank 1 reads a checkpoint that is broken on its node: rank 0 names it, nobody writes anything."""
    broken = tmp_path / "sae1"
    shutil.copytree(saes / "run" / "resid_post_0", broken)
    (broken / "cfg.json").write_text("{not json")
    (tmp_path / "sae0").symlink_to(saes / "run" / "resid_post_0")
    script = str(Path(__file__).with_name("per_rank_cli.py"))
    done = torchrun(
        "eval", "--sae-path", str(tmp_path / "sae{rank}"), "--out", str(tmp_path / "o"), *COMMON, script=script
    )
    assert done.returncode != 0
    (line,) = _our_lines(done.stderr)
    assert line.startswith("error: rank 1 failed:") and "is not valid JSON" in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_an_activation_cache_on_two_ranks(saes, tmp_path, builtin_model):
    """Ranks share the batches of a cache (every other batch each): the numbers of one process."""
    import numpy as np
    import torch

    from saehealth.data import load_dataset, sequence_batches

    dataset = load_dataset("saehealth/pydoc-corpus", "validation")
    (tokens,) = sequence_batches(dataset, builtin_model.tokenizer, 128, 12, 12, 0)
    with torch.no_grad():
        _, cache = builtin_model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    np.save(tmp_path / "acts.npy", cache["blocks.0.hook_resid_post"].numpy())
    args = ["--sae-path", str(saes / "run" / "resid_post_0"), "--activations", str(tmp_path / "acts.npy")]
    args += ["--batch-size", "4", "--skip", "absorption", "--device", "cpu"]
    done = torchrun("eval", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    assert single("eval", *args, "--out", str(tmp_path / "one"), "-q").returncode == 0
    assert_same_numbers(load_result(tmp_path / "two"), load_result(tmp_path / "one"))
