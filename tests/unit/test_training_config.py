"""Training configs: reading, overrides, validation and the SAELens runner config they build. No training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from saehealth import BUILTIN_DATASET, BUILTIN_MODEL
from saehealth.cli import main
from saehealth.errors import ConfigError, IncompatibleSAEError
from saehealth.training import (
    DEMO_CONFIG,
    architectures,
    build_runner_config,
    check_device,
    load_config,
    parse_overrides,
    parse_value,
    plan_training,
    split_cli_args,
)

CONFIGS = Path(__file__).resolve().parents[2] / "scripts" / "configs"
SIX = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")


# ---------------------------------------------------------------- values and command-line tokens
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1e-4", 1e-4),
        ("5.0", 5.0),
        ("64", 64),
        ("null", None),
        ("none", "none"),
        ("[128, 512]", [128, 512]),
        ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post"),
        ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),
    ],
)
def test_values_are_yaml_scalars_with_exponent_floats(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_overrides_take_pairs_equals_and_bare_switches():
    tokens = ["--k", "32", "--lr=1e-4", "--log_to_wandb", "--sae.d_sae", "256", "--training-tokens", "5e5"]
    assert parse_overrides(tokens) == {
        "k": 32,
        "lr": 1e-4,
        "log_to_wandb": True,
        "sae.d_sae": 256,
        "training-tokens": 5e5,
    }


def test_a_stray_positional_is_an_error():
    with pytest.raises(ConfigError, match="config file first"):
        parse_overrides(["--k", "32", "extra", "words"])


def test_cli_args_split_into_config_and_overrides():
    assert split_cli_args(["demo.yaml", "--k", "8"]) == ("demo.yaml", ["--k", "8"])
    assert split_cli_args(["--k", "8"]) == (None, ["--k", "8"])
    assert split_cli_args(["--debug", "demo.yaml", "--debug", "--k", "8"]) == ("demo.yaml", ["--k", "8"])


# ---------------------------------------------------------------- files
def test_yaml_and_json_files_and_the_packaged_demo(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 1e-4\nsae:\n  architecture: topk\n  k: 16\n")
    (tmp_path / "b.json").write_text(json.dumps({"lr": 0.0001, "sae": {"architecture": "topk", "k": 16}}))
    assert load_config(tmp_path / "a.yaml") == load_config(str(tmp_path / "b.json"))
    assert load_config("demo") == DEMO_CONFIG
    assert load_config("demo") is not DEMO_CONFIG  # a copy: callers may not edit the packaged one


def test_packaged_demo_config_is_the_shipped_yaml():
    shipped = load_config(CONFIGS / "demo.yaml")
    assert shipped == DEMO_CONFIG


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("lr: [1, 2\n", "is not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        plan_training(path)


def test_invalid_json_names_the_format(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{'single': quotes}")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        plan_training(path)


# ---------------------------------------------------------------- merging and checking
def test_defaults_without_a_config():
    plan = plan_training()
    assert plan.runner["model_name"] == BUILTIN_MODEL
    assert plan.runner["dataset_path"] == BUILTIN_DATASET
    assert plan.runner["hook_name"] == "blocks.0.hook_resid_post"
    assert plan.architecture == "standard"
    assert plan.expansion_factor == 8
    assert plan.logger["log_to_wandb"] is False  # SAELens' own default is True


def test_overrides_beat_the_config_and_get_their_types():
    plan = plan_training("demo", ["--k", "32", "--lr", "1e-4", "--training_tokens", "5e5", "--log_to_wandb", "true"])
    assert plan.sae["k"] == 32 and isinstance(plan.sae["k"], int)
    assert plan.runner["lr"] == pytest.approx(1e-4)
    assert plan.runner["training_tokens"] == 500_000 and isinstance(plan.runner["training_tokens"], int)
    assert plan.logger["log_to_wandb"] is True
    assert plan.output_name == "demo"


def test_batchtopk_k_is_a_float_in_saelens():
    plan = plan_training("demo", ["--architecture", "batchtopk", "--k", "32"])
    assert plan.sae["k"] == 32.0 and isinstance(plan.sae["k"], float)


def test_nested_and_dotted_keys_reach_the_sub_configs():
    plan = plan_training({"sae": {"architecture": "topk", "k": 8}, "logger": {"wandb_project": "p"}}, ["--sae.k", "4"])
    assert plan.sae == {"architecture": "topk", "k": 4}
    assert plan.logger == {"log_to_wandb": False, "wandb_project": "p"}


def test_layer_sets_the_residual_hook_unless_a_hook_is_given():
    assert plan_training("demo", ["--layer", "1"]).runner["hook_name"] == "blocks.1.hook_resid_post"
    plan = plan_training(None, ["--layer", "1", "--hook_name", "blocks.1.hook_mlp_out"])
    assert plan.runner["hook_name"] == "blocks.1.hook_mlp_out"
    with pytest.raises(ConfigError, match="disagree"):
        plan_training(None, ["--layer", "2", "--hook_name", "blocks.1.hook_mlp_out"])


def test_expansion_factor_and_d_sae_replace_each_other_across_levels():
    plan = plan_training("demo", ["--expansion_factor", "4"])  # demo sets d_sae 1024
    assert "d_sae" not in plan.sae and plan.expansion_factor == 4
    plan = plan_training({"expansion_factor": 16}, ["--d_sae", "300"])
    assert plan.sae["d_sae"] == 300 and plan.expansion_factor is None
    with pytest.raises(ConfigError, match="not both"):
        plan_training(None, ["--d_sae", "300", "--expansion_factor", "2"])


def test_switching_architecture_drops_the_old_ones_settings_with_a_note():
    plan = plan_training({"sae": {"architecture": "standard", "l1_coefficient": 5.0}}, ["--architecture", "topk"])
    assert "l1_coefficient" not in plan.sae
    assert any("l1_coefficient" in note for note in plan.notes)


def test_a_setting_of_another_architecture_is_named_with_its_owners():
    with pytest.raises(
        ConfigError, match=r"l1_coefficient .* not a setting of the topk architecture .*standard, gated"
    ):
        plan_training("demo", ["--l1_coefficient", "5"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--trainig_tokens", "1e6"], r"Unknown setting 'trainig_tokens' .*Did you mean 'training_tokens'"),
        (["--sae.kk", "3"], r"Unknown setting sae.kk .*Did you mean 'k'"),
        (["--logger.log_to_wand", "true"], r"Did you mean 'log_to_wandb'"),
        (["--architecture", "topkk"], r"Unknown architecture 'topkk'.*Valid: .*matryoshka_batchtopk"),
        (["--lr", "fast"], r"Bad value for lr \(command line\): expected a number, got 'fast'"),
        (["--k", "many"], r"Bad value for k \(command line\): expected an integer"),
        (["--log_to_wandb", "maybe"], r"expected true or false"),
        (["--normalize_activations", "expected_average_only_out"], r"one of 'none', 'expected_average_only_in'"),
        (["--layer", "-1"], r"layer number >= 0"),
        (["--output_name", "../escape"], r"plain folder name"),
        (["--training_tokens", "100"], r"smaller than one batch"),
        (["--expansion_factor", "0"], r"must be positive"),
    ],
)
def test_mistakes_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        plan_training("demo", overrides)
    assert "\n" not in str(info.value)


def test_a_mistake_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sae:\n  architecture: topk\n  k: lots\n")
    with pytest.raises(ConfigError, match=r"k \(config .*run.yaml\)"):
        plan_training(path)


# ---------------------------------------------------------------- the SAELens runner config
def test_runner_config_reads_d_in_from_the_model_width_and_expands():
    cfg = build_runner_config(plan_training(None, ["--expansion_factor", "4"]), 128, "out/x", "out/x-checkpoints")
    assert (cfg.sae.d_in, cfg.sae.d_sae) == (128, 512)
    assert cfg.output_path == "out/x" and cfg.checkpoint_path == "out/x-checkpoints"  # no run id appended
    assert cfg.logger.log_to_wandb is False


def test_a_d_in_that_does_not_match_the_hook_is_incompatible():
    with pytest.raises(IncompatibleSAEError, match="d_in 64 does not match the width 128"):
        build_runner_config(plan_training(None, ["--sae.d_in", "64"]), 128, None, None)


def test_matryoshka_widths_default_to_nested_fractions_and_are_checked():
    cfg = build_runner_config(plan_training("demo", ["--architecture", "matryoshka_batchtopk"]), 128, None, None)
    assert cfg.sae.matryoshka_widths == [128, 256, 512, 1024]
    plan = plan_training("demo", ["--architecture", "matryoshka_batchtopk", "--matryoshka_widths", "[512, 256]"])
    with pytest.raises(ConfigError, match="increase strictly"):
        build_runner_config(plan, 128, None, None)


def test_the_activation_buffer_is_sized_to_hold_a_training_batch():
    # SAELens' defaults (20 × 128 positions) cannot hold its default 4096-token batch.
    cfg = build_runner_config(plan_training(), 128, None, None)
    assert cfg.n_batches_in_buffer * cfg.context_size >= 2 * cfg.train_batch_size_tokens
    with pytest.raises(ConfigError, match="n_batches_in_buffer"):
        build_runner_config(plan_training(None, ["--n_batches_in_buffer", "4"]), 128, None, None)


def test_saelens_own_checks_surface_as_config_errors():
    with pytest.raises(ConfigError, match="SAELens rejected the configuration"):
        build_runner_config(plan_training(None, ["--use_chat_formatting", "true"]), 128, None, None)


def test_a_runner_cfg_json_is_a_config():
    cfg = build_runner_config(plan_training("demo"), 128, "out/demo", None)
    again = build_runner_config(plan_training(json.loads(json.dumps(cfg.to_dict()))), 128, "out/demo", None)
    assert again.to_dict() == cfg.to_dict()


def test_devices_are_checked_before_anything_loads():
    import torch

    check_device("cpu")
    with pytest.raises(ConfigError, match="Unknown device 'gpu'"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available on this machine"):
            check_device("cuda")


# ---------------------------------------------------------------- shipped configs
def test_one_shipped_config_per_architecture_plus_demo_and_llama():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {*SIX, "demo", "llama3_8b_layer12"} <= names
    assert set(SIX) <= set(architectures())


@pytest.mark.parametrize("architecture", SIX)
def test_architecture_configs_build_on_the_builtin_model(architecture):
    plan = plan_training(CONFIGS / f"{architecture}.yaml")
    assert plan.architecture == architecture
    assert plan.runner.get("model_name", BUILTIN_MODEL) == BUILTIN_MODEL
    cfg = build_runner_config(plan, 128, None, None)
    assert cfg.sae.architecture() == architecture


def test_llama_config_reproduces_the_003_setup():
    raw = yaml.safe_load((CONFIGS / "llama3_8b_layer12.yaml").read_text())
    assert "d_in" not in raw.get("sae", {})
    cfg = build_runner_config(plan_training(CONFIGS / "llama3_8b_layer12.yaml"), 4096, None, None)
    assert cfg.model_name == "meta-llama/Meta-Llama-3-8B"
    assert cfg.hook_name == "blocks.12.hook_resid_post"
    assert cfg.dataset_path == "jyanimaulik/yahoo_finance_stockmarket_news"
    assert (cfg.sae.architecture(), cfg.sae.d_in, cfg.sae.d_sae) == ("standard", 4096, 32 * 4096)
    assert cfg.sae.l1_coefficient == 5.0 and cfg.sae.normalize_activations == "none"
    assert (cfg.training_tokens, cfg.lr, cfg.train_batch_size_tokens, cfg.context_size) == (500_000, 1e-4, 1024, 2048)


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "no/such/config.yaml"], "does not exist"),
        (["train", "demo", "--lrr", "1e-4"], "Did you mean 'lr'"),
        (["train", "demo", "--architecture", "relu"], "Unknown architecture 'relu'"),
        (["train", "demo", "--d_sae", "big"], "Bad value for d_sae"),
    ],
)
def test_cli_mistakes_exit_1_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()
