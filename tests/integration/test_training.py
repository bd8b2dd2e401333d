"""Training through SAELens on the built-in model: every architecture, the checkpoint layout, the CLI.

Runs are tiny (a few thousand tokens, d_sae 256): they check the plumbing, not SAE quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saehealth import BUILTIN_DATASET, BUILTIN_MODEL
from saehealth.cli import main
from saehealth.output import MANIFEST
from saehealth.training import train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "scripts" / "configs"
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "runner_cfg.json")
TINY = [
    "--training_tokens",
    "4096",
    "--train_batch_size_tokens",
    "1024",
    "--d_sae",
    "256",
    "--n_batches_in_buffer",
    "16",
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated"])
def test_each_architecture_trains_and_loads_in_saelens(architecture, workdir, builtin_model):
    from sae_lens import SAE

    path = train(CONFIGS / f"{architecture}.yaml", [*TINY, "--n_batches_for_norm_estimate", "2"], quiet=True)

    assert path == workdir / "checkpoints" / architecture
    assert sorted(p.name for p in path.iterdir()) == sorted([*SAELENS_FILES, MANIFEST])  # saehealth's own folder
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [architecture]  # no staging left
    sae = SAE.load_from_disk(path)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (128, 256)
    assert sae.cfg.metadata.model_name == BUILTIN_MODEL
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert sae.cfg.metadata.context_size == 128
    assert sae.cfg.metadata.dataset_path == BUILTIN_DATASET
    assert sae.cfg.metadata.prepend_bos is True
    runner_cfg = json.loads((path / "runner_cfg.json").read_text())
    assert runner_cfg["output_path"] == str(path)
    assert runner_cfg["sae"]["architecture"] == architecture

    _, cache = builtin_model.run_with_cache("def f(x): return x", names_filter=["blocks.0.hook_resid_post"])
    acts = cache["blocks.0.hook_resid_post"][0]
    with torch.no_grad():
        latents = sae.encode(acts)
        recon = sae.decode(latents)
    assert latents.shape == (acts.shape[0], 256) and recon.shape == acts.shape
    assert torch.isfinite(recon).all()


def test_cli_trains_a_local_dataset_and_replaces_an_earlier_checkpoint(workdir, capsys):
    corpus = workdir / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n" * 20}) + "\n" for i in range(40))
    )
    args = ["train", "demo", *TINY, "--dataset_path", str(corpus), "--output_name", "mine", "--k", "8"]

    handler = signal.getsignal(signal.SIGINT)
    main(args)
    assert signal.getsignal(signal.SIGINT) is handler  # SAELens' run-time handlers are removed again
    first = (workdir / "checkpoints" / "mine" / "sae_weights.safetensors").read_bytes()
    main([*args, "--seed", "7"])

    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(Path("checkpoints") / "mine")  # where the reader stands (the test runs in workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["mine"]
    assert (workdir / "checkpoints" / "mine" / "sae_weights.safetensors").read_bytes() != first
    metadata = json.loads((workdir / "checkpoints" / "mine" / "cfg.json").read_text())["metadata"]
    assert metadata["dataset_path"] == str(corpus)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hook_name", "blocks.0.hook_resid_pots"], "no hook 'blocks.0.hook_resid_pots'. Did you mean"),
        (["--layer", "7"], "no hook 'blocks.7.hook_resid_post'"),
        (["--sae.d_in", "64"], "d_in 64 does not match the width 128"),
        (["--dataset_path", "./missing.jsonl"], "does not exist"),
        (["--model_name", "./no_model_here"], "Unknown model './no_model_here'"),
    ],
)
def test_cli_mistakes_found_against_the_model_exit_1_before_training(args, message, workdir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "demo", *args])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (workdir / "checkpoints").exists()


def test_shell_script_runs_the_same_command(workdir):
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [str(REPO / "scripts" / "run_training.sh"), str(CONFIGS / "topk.yaml"), *TINY, "--output_name", "sh"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(Path("checkpoints") / "sh")  # relative to where it ran
    assert "tok/s" in done.stderr  # SAELens' progress bar, counting tokens
    assert (workdir / "checkpoints" / "sh" / "cfg.json").is_file()


def test_train_with_health_every_writes_a_trajectory_and_a_plot(workdir, capsys):
    """`saehealth train demo --health-every`: several checks during training, the final one with absorption."""
    import json

    args = ["train", "demo", *TINY, "--training_tokens", "8192", "--output_name", "watched"]
    main([*args, "--health-every", "2048", "--health-tokens", "512"])
    folder = workdir / "checkpoints" / "watched"
    document = json.loads((folder / "training_health.json").read_text())
    checks = document["checks"]
    seen = [check["tokens_seen"] for check in checks]
    assert len(checks) >= 4 and seen == sorted(seen) and seen[-1] == 8192
    assert all(check["metrics"]["loss_recovered"] is not None for check in checks)
    assert checks[-1]["metrics"]["absorption_letters_scored"] is not None  # absorption at the final check only
    assert "absorption_fraction" not in checks[0]["metrics"]
    assert (folder / "training_health.png").stat().st_size > 0
    assert "health @ 2,048 tokens" in capsys.readouterr().err


def test_health_options_need_health_every(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "demo", *TINY, "--health-tokens", "512"])
    assert exit_info.value.code == 1
    assert "--health-every" in capsys.readouterr().err
