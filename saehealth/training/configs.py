"""Training configs as files and `--key value` tokens: the packaged demo config, YAML/JSON reading, overrides;
and which model and dataset names are local."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from saehealth import builtin
from saehealth.errors import ConfigError

CHECKPOINTS_DIR = "checkpoints"
DEFAULT_HOOK = "blocks.0.hook_resid_post"
DEFAULT_EXPANSION_FACTOR = 8
# Keys saehealth adds on top of SAELens' LanguageModelSAERunnerConfig fields.
SAEHEALTH_KEYS = ("architecture", "layer", "expansion_factor", "output_name")
SUBCONFIGS = ("sae", "logger")
OUTPUT_OPTION = "the checkpoint folder"  # how output errors name the folder (output_path, or checkpoints/<name>)

DEMO_CONFIG: dict[str, Any] = {
    "model_name": builtin.BUILTIN_MODEL,
    "hook_name": DEFAULT_HOOK,
    "dataset_path": builtin.BUILTIN_DATASET,
    "context_size": 128,
    "prepend_bos": True,
    "exclude_special_tokens": True,
    "training_tokens": 750_000,
    "train_batch_size_tokens": 4096,
    "store_batch_size_prompts": 32,
    "n_batches_in_buffer": 256,
    "dead_feature_window": 20,
    "lr": 2.0e-3,
    "lr_warm_up_steps": 20,
    "lr_scheduler_name": "constant",
    "device": "auto",
    "seed": 42,
    "sae": {"architecture": "topk", "d_sae": 1024, "k": 64, "normalize_activations": "none"},
    "logger": {"log_to_wandb": False},
    "output_name": "demo",
}
PACKAGED_CONFIGS: dict[str, dict[str, Any]] = {"demo": DEMO_CONFIG}


# ---------------------------------------------------------------- reading configs and overrides
class _YamlLoader(yaml.SafeLoader):
    """PyYAML (YAML 1.1) reads `1e-4` as a string; accept YAML 1.2 exponent floats as numbers."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar: `true`, `1e-4`, `64`, `null`, `[128, 512]` get their types."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError:
        return text  # not YAML (e.g. an unbalanced bracket): keep the raw string


def load_config(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The config as a dict: a YAML/JSON file, a packaged name ('demo'), a dict, or None (empty)."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config).expanduser()
    if not path.exists() and str(config) in PACKAGED_CONFIGS:
        return copy.deepcopy(PACKAGED_CONFIGS[str(config)])
    if not path.is_file():
        hint = f" Packaged configs: {', '.join(PACKAGED_CONFIGS)}." if not path.suffix else ""
        raise ConfigError(f"Config file {config} does not exist: check the path.{hint}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YamlLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}.") from exc
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Config file {path} is not valid {_format_name(path)}: {first_line}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings, not a {type(data).__name__}.")
    return data


def _format_name(path: Path) -> str:
    return "JSON" if path.suffix == ".json" else "YAML"


def split_cli_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split `[CONFIG] [--key value ...]` into the config path (or None) and the override tokens."""
    args = [a for a in args if a != "--debug"]  # the CLI's global flag, wherever the user put it
    if args and not args[0].startswith("--"):
        return args[0], args[1:]
    return None, args


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """`--key value`, `--key=value` and bare `--flag` (true) tokens as a dict; values as YAML scalars."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"Unexpected argument {token!r}: give the config file first, then --key value pairs.")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            # A flag followed by another flag (or nothing) is a boolean switch.
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "true"
        if not key:
            raise ConfigError(f"Empty option name in {token!r}: use --key value.")
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def is_local_model(name: str) -> bool:
    # A path-like name that does not exist goes to saehealth's loader too, which says so plainly.
    return name == builtin.BUILTIN_MODEL or Path(name).expanduser().is_dir() or name.startswith((".", "/", "~"))


def is_local_dataset(name: str) -> bool:
    from saehealth.data import LOCAL_FORMATS

    return (
        name == builtin.BUILTIN_DATASET
        or Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or Path(name).suffix in LOCAL_FORMATS
    )
