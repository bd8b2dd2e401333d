"""Both routed layouts scored end to end from the command line on the built-in model, with explicit hooks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import saehealth
from saehealth.cli import main
from saehealth.latents.view import load_view
from saehealth.result import load_result

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOOKS = "blocks.0.hook_resid_post,blocks.1.hook_resid_post"
D, M = 128, 256
COMMON = ["--model", saehealth.BUILTIN_MODEL, "--tokens", "256", "--skip", "geometry", "--examples", "0"]


def _weights(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D, M, generator=g)
    return {
        "sae.pre_bias": torch.zeros(D),
        "sae.latent_bias": torch.zeros(M),
        "sae.encoder.weight": decoder.T.clone(),
        "sae.decoder.weight": decoder / decoder.norm(dim=0, keepdim=True),
    }


def _seed_checkpoint(folder):
    folder.mkdir()
    state = {"router.router.weight": torch.randn(2, D), **_weights()}
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, folder / "RouteSAE_1.pt")
    model = {"type": "RouteSAE", "base_sae_type": "TopKSAE", "n_layers": 2, "start_layer": 1, "end_layer": 3,
             "hidden_size": D, "latent_size": M, "k": 16, "aggre": "sum", "routing": "hard",
             "language_model_path": saehealth.BUILTIN_MODEL}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    return folder / "RouteSAE_1.pt"


def _eval(capsys, *args) -> tuple[int, str]:
    try:
        main(["eval", *args, "--quiet"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip()


def test_seed_layout_end_to_end_with_explicit_hooks(tmp_path, capsys):
    path = _seed_checkpoint(tmp_path / "run")
    out = tmp_path / "out"
    # HF index 2 of a 2-layer model is the post-norm final state: refused, with the fix
    code, err = _eval(capsys, "--sae-path", str(path), *COMMON, "--out", str(out))
    assert code == 1 and len(err.splitlines()) == 1 and "--hook" in err and "Traceback" not in err
    code, err = _eval(capsys, "--sae-path", str(path), "--hook", HOOKS, *COMMON, "--out", str(out))
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    routing = result["routing"]
    assert routing["layout"] == "seed" and routing["splice_mode"] == "rescaled" and routing["normalize_eps"] is None
    assert [layer["hook"] for layer in routing["layers"]] == HOOKS.split(",")
    assert sum(layer["tokens"] for layer in routing["layers"]) == result["eval"]["tokens_scored"]
    assert sum(layer["route_share"] for layer in routing["layers"]) == pytest.approx(1.0)
    assert {"routing_unused_layers", "routing_collapse"} <= set(result["verdicts"])
    assert result["metrics"]["l0"] == pytest.approx(16.0, abs=0.5)  # ReLU TopK: at most k
    assert result["not_measured"]["absorption_fraction"].startswith("not applicable to a routed SAE")
    assert any("routed zero ablation" in note for note in result["notes"])
    report = (out / "report.md").read_text()
    assert "## Routing" in report and "`blocks.1.hook_resid_post`" in report


def test_official_layout_end_to_end_with_the_splice_mode_recorded(tmp_path, capsys):
    path = tmp_path / f"sum_hard_K16_tiny_train_{M}.pt"
    torch.save({"router.weight": torch.randn(2, D), **_weights(1)}, path)
    out = tmp_path / "out"
    code, err = _eval(capsys, "--sae-path", str(path), "--hook", HOOKS, "--route", "splice=rescaled", *COMMON[:-2],
                      "--examples", "2", "--out", str(out))  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["routing"]["splice_mode"] == "rescaled" and result["request"]["route"] == "splice=rescaled"
    assert result["routing"]["sources"]["splice"] == "option (--route)"
    assert result["metrics"]["l0"] == 16.0  # signed TopK: exactly k
    assert result["metrics"]["loss_recovered"] is not None and result["metrics"]["kl_div_with_sae"] > 0
    view = load_view(load_result(out / "result.json"), out, cards=2)  # the latent browser's cards
    card = next(iter(view.cards.values()))
    assert card.routed_layers is not None and "blocks." in card.routed_layers and "%" in card.routed_layers
    # the HTML latent browser: a bar per routed layer on every card, the layer counts adding up to its firings
    html = (out / "report.html").read_text()
    assert "Firings by routed layer" in html
    assert any("Logit lens of a routed SAE" in note and "blocks.0.hook_resid_post" in note for note in view.notes)
    assert "Logit lens of a routed SAE" in html
    embedded = re.search(r'<script type="application/json" id="latent-data">(.*?)</script>', html, re.S).group(1)
    cards = json.loads(embedded)["cards"]
    assert cards
    for latent, data in cards.items():
        assert [row[0] for row in data["layers"]] == HOOKS.split(","), latent
        fired = view.cards[int(latent)].firing_count if int(latent) in view.cards else None
        facts = dict(data["facts"])
        assert sum(row[2] for row in data["layers"]) == int(facts["fired on"].split()[0].replace(",", ""))
        assert sum(row[1] for row in data["layers"]) == pytest.approx(100.0, abs=0.2)
        assert fired is None or fired == sum(row[2] for row in data["layers"])


@pytest.mark.parametrize(
    ("option", "value", "pattern"),
    [
        ("--saebench-out", "sb", "drop --saebench-out"),
        ("--layer", "1", "--hook H0,H1"),
        ("--activations", "x.npy", "drop --activations"),
    ],
)
def test_options_a_routed_sae_does_not_support_are_one_line(tmp_path, capsys, option, value, pattern):
    path = tmp_path / f"sum_hard_K16_tiny_train_{M}.pt"
    torch.save({"router.weight": torch.randn(2, D), **_weights(1)}, path)
    hook = [] if option == "--layer" else ["--hook", HOOKS]
    code, err = _eval(capsys, "--sae-path", str(path), *hook, option, str(tmp_path / value) if option != "--layer" else value,
                      "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 1 and len(err.splitlines()) == 1 and pattern in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "result.json").exists()


def test_the_routed_demo_script_writes_a_checkpoint_that_eval_scores(tmp_path, capsys):
    """scripts/build_routed_demo.py (docs/routed.md's way to see a routed report) in the layout docs/routed.md runs,
    tiny settings: its checkpoint loads and `saehealth eval` scores it with the command it prints. (The seed
    layout it can also write is the synthetic checkpoint of the tests above.)"""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_routed_demo.py"
    folder = tmp_path / "demo"
    args = "--layout routesaes --d-sae 64 --k 4 --steps 3 --sequences 8".split() + ["--out", str(folder)]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    command = run.stdout.strip().splitlines()[-1].split()
    assert command[:2] == ["saehealth", "eval"] and "--hook" in command
    path = command[command.index("--sae-path") + 1]
    out = tmp_path / "out"
    code, err = _eval(capsys, *command[2:], *COMMON, "--out", str(out))
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["routing"]["layout"] == "routesaes"
    assert result["sae"]["d_sae"] == 64 and str(path).endswith(".pt")
