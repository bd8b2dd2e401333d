"""Train SAEs with SAELens from a config file plus `--key value` overrides.

A thin layer over SAELens' `LanguageModelSAERunnerConfig` and `LanguageModelSAETrainingRunner`:

- A config is a YAML or JSON file (or a dict) holding a `LanguageModelSAERunnerConfig` in SAELens' own
  field names, with the SAE's settings in its `sae` sub-config (`sae: {architecture: topk, k: 64}`) and
  W&B settings in `logger`. A `runner_cfg.json` written by an earlier run is a valid config.
- Shortcuts: any field of `sae` or `logger` may also be given at top level (`k: 64`, `log_to_wandb:
  true`), or dotted (`sae.k: 64`); and saehealth adds `architecture`, `layer` (hook
  `blocks.N.hook_resid_post`), `expansion_factor` (d_sae = factor × d_in) and `output_name`.
- d_in is read from the model's hook, so configs never need it.
- Defaults are SAELens' own, except: the built-in model and corpus, hook `blocks.0.hook_resid_post`,
  the standard architecture at expansion factor 8, W&B off, and an activation buffer big enough for
  one training batch (SAELens' default buffer of 20 contexts of 128 tokens is not).
- The built-in model and local model folders are loaded by `saehealth.models.load_model`, the built-in
  corpus (its `train` split) and local datasets by `saehealth.data.load_dataset` (documents shuffled
  with `seed`), and handed to SAELens as `override_model` / `override_dataset`: SAELens' own loaders
  would call the hub for them. Hub models are loaded by SAELens' `load_model` (so the hook can be
  checked before training) and hub datasets by SAELens itself.
- Every key, value, architecture, device and the hook are checked before training starts; mistakes
  raise `saehealth.errors` classes with one-line messages.
- The final SAE is SAELens' own format (cfg.json, sae_weights.safetensors, sparsity.safetensors,
  runner_cfg.json) directly in `checkpoints/<output_name>/` under the current directory (or `output_path`).
  That folder follows saehealth's output rule (`saehealth/output.py`): it must be new, empty or a
  checkpoint saehealth wrote, checked before training starts, and the checkpoint is written to a staging
  folder that replaces it only when training succeeded, so the user's files are never deleted and an
  interrupted run leaves an earlier checkpoint as it was.

The packaged demo config is `DEMO_CONFIG` (the source of truth; `scripts/configs/demo.yaml` is the same
content, pinned by a test); `train("demo")` uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import sys
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from saehealth import builtin
from saehealth.config import resolve_device
from saehealth.errors import ConfigError, DataError, IncompatibleSAEError, ModelError, suggest

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

_console = None


def _status(message: str) -> None:
    """One line of progress on stderr (stdout is left for the checkpoint path)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    _console.print(message, soft_wrap=True)


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


# ---------------------------------------------------------------- what SAELens accepts
@lru_cache(maxsize=1)
def _runner_fields() -> dict[str, Any]:
    from sae_lens.config import LanguageModelSAERunnerConfig

    hints = typing.get_type_hints(LanguageModelSAERunnerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(LanguageModelSAERunnerConfig) if f.name not in SUBCONFIGS}


@lru_cache(maxsize=1)
def _logger_fields() -> dict[str, Any]:
    from sae_lens.config import LoggingConfig

    return typing.get_type_hints(LoggingConfig)


@lru_cache(maxsize=1)
def _sae_fields_by_architecture() -> dict[str, dict[str, Any]]:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    by_arch = {}
    for name, (_, config_class) in SAE_TRAINING_CLASS_REGISTRY.items():
        hints = typing.get_type_hints(config_class)
        # metadata is written by SAELens' runner (model, hook, dataset), never by the user.
        by_arch[name] = {f.name: hints[f.name] for f in dataclasses.fields(config_class) if f.name != "metadata"}
    return by_arch


def architectures() -> list[str]:
    """Every SAE architecture SAELens can train (its training registry)."""
    return list(_sae_fields_by_architecture())


def _all_sae_fields() -> set[str]:
    return {name for fields in _sae_fields_by_architecture().values() for name in fields}


def _all_known_keys() -> list[str]:
    return [*_runner_fields(), *SUBCONFIGS, *SAEHEALTH_KEYS, *sorted(_all_sae_fields()), *_logger_fields()]


def _check_architecture(value: Any, where: str) -> str:
    valid = architectures()
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(
            f"Unknown architecture {value!r} ({where}).{suggest(str(value), valid)} Valid: {', '.join(valid)}."
        )
    return value


# ---------------------------------------------------------------- typed values
def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """`value` converted to the field's type, or a ConfigError naming the key and the expected type."""
    for strict in (True, False):
        ok, result = _try_coerce(value, annotation, strict)
        if ok:
            return result
    raise ConfigError(
        f"Bad value for {key} ({where}): expected {_describe(annotation)}, got {value!r} ({type(value).__name__})."
    )


def _try_coerce(value: Any, ann: Any, strict: bool) -> tuple[bool, Any]:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any or isinstance(ann, typing.TypeVar):
        return True, value
    if origin in (Union, types.UnionType):
        # Strict matches first across all members, so `true` stays a bool in `bool | int`.
        for arg in args:
            ok, result = _try_coerce(value, arg, strict)
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        return (value in args, value)
    if ann is type(None):
        if value is None:
            return True, None
        return (not strict and isinstance(value, str) and value.lower() in ("none", "null"), None)
    if ann is bool:
        return (isinstance(value, bool), value)
    if ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        # `5e5` reads as a float; an integral float is a fine int.
        if not strict and isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if ann is float:
        if isinstance(value, float):
            return True, value
        if not strict and isinstance(value, int) and not isinstance(value, bool):
            return True, float(value)
        if not strict and isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if ann is str:
        if isinstance(value, str):
            return True, value
        return (not strict and isinstance(value, (int, float)) and not isinstance(value, bool), str(value))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, None
        item_ann = args[0] if args else Any
        items = []
        for item in value:
            ok, converted = _try_coerce(item, item_ann, strict)
            if not ok:
                return False, None
            items.append(converted)
        return True, (tuple(items) if origin is tuple else items)
    if origin is dict or ann is dict:
        return (isinstance(value, dict), value)
    return (isinstance(value, ann), value) if isinstance(ann, type) else (True, value)


def _describe(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if ann is type(None):
        return "null"
    if ann is bool:
        return "true or false"
    if ann in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[ann]
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict or ann is dict:
        return "a mapping"
    return getattr(ann, "__name__", str(ann))


# ---------------------------------------------------------------- merging config levels
@dataclasses.dataclass
class _Level:
    """Settings from one source (defaults, the config file, the command line), routed by where they go."""

    where: str
    runner: dict[str, Any] = dataclasses.field(default_factory=dict)
    sae: dict[str, Any] = dataclasses.field(default_factory=dict)
    logger: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _split_level(raw: Mapping[str, Any], where: str) -> _Level:
    level = _Level(where)
    for raw_key, value in raw.items():
        key = str(raw_key).replace("-", "_")
        head, dot, sub = key.partition(".")
        if dot or key in SUBCONFIGS:
            if head not in SUBCONFIGS:
                raise ConfigError(f"Unknown setting {key!r} ({where}): only sae.<field> and logger.<field> nest.")
            if dot:
                _route_nested(level, head, sub, value)
            elif isinstance(value, Mapping):
                for nested_key, nested_value in value.items():
                    _route_nested(level, head, str(nested_key).replace("-", "_"), nested_value)
            else:
                raise ConfigError(f"{key} ({where}) must be a mapping of settings, got {value!r}.")
        elif key in SAEHEALTH_KEYS:
            level.extra[key] = value
        elif key in _runner_fields():
            level.runner[key] = value
        elif key in _all_sae_fields():
            level.sae[key] = value
        elif key in _logger_fields():
            level.logger[key] = value
        else:
            raise ConfigError(f"Unknown setting {key!r} ({where}).{suggest(key, _all_known_keys()) or _FIELDS_HINT}")
    _apply_layer(level)
    if "expansion_factor" in level.extra and "d_sae" in level.sae:
        raise ConfigError(f"Give d_sae or expansion_factor, not both ({where}).")
    if "output_name" in level.extra and "output_path" in level.runner:
        raise ConfigError(f"Give output_name or output_path, not both ({where}).")
    return level


_FIELDS_HINT = " Settings are LanguageModelSAERunnerConfig fields (see `saehealth train --help`)."


def _route_nested(level: _Level, head: str, key: str, value: Any) -> None:
    if head == "logger":
        if key not in _logger_fields():
            raise ConfigError(
                f"Unknown setting logger.{key} ({level.where}).{suggest(key, _logger_fields())} "
                f"logger settings: {', '.join(_logger_fields())}."
            )
        level.logger[key] = value
    elif key == "architecture":
        level.extra["architecture"] = value
    elif key == "metadata":
        pass  # written by SAELens' runner from the model, hook and dataset; an old runner_cfg.json carries one
    elif key in _all_sae_fields():
        level.sae[key] = value
    else:
        raise ConfigError(
            f"Unknown setting sae.{key} ({level.where}).{suggest(key, sorted(_all_sae_fields())) or _FIELDS_HINT}"
        )


def _apply_layer(level: _Level) -> None:
    """`layer: N` means hook blocks.N.hook_resid_post, unless the same source names a hook itself."""
    if "layer" not in level.extra:
        return
    layer = level.extra.pop("layer")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ConfigError(f"Bad value for layer ({level.where}): expected a layer number >= 0, got {layer!r}.")
    hook = level.runner.get("hook_name")
    if hook is None:
        level.runner["hook_name"] = f"blocks.{layer}.hook_resid_post"
    elif re.match(rf"^blocks\.{layer}\.", str(hook)) is None:
        raise ConfigError(f"layer {layer} and hook_name {hook!r} disagree ({level.where}): give one of them.")


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """A validated training request, before the model is loaded: SAELens fields plus saehealth's extras.

    `runner`, `sae` and `logger` hold typed values under SAELens' field names; `sae` holds `architecture`
    and lacks `d_in` (and `d_sae` when `expansion_factor` is set) until the model's hook width is known.
    """

    runner: dict[str, Any]
    sae: dict[str, Any]
    logger: dict[str, Any]
    expansion_factor: float | None
    output_name: str | None
    notes: tuple[str, ...] = ()

    @property
    def architecture(self) -> str:
        return self.sae["architecture"]


def _defaults() -> dict[str, Any]:
    return {
        "model_name": builtin.BUILTIN_MODEL,
        "dataset_path": builtin.BUILTIN_DATASET,
        "hook_name": DEFAULT_HOOK,
        "architecture": "standard",
        "expansion_factor": DEFAULT_EXPANSION_FACTOR,
        "log_to_wandb": False,
        "device": "auto",
    }


def plan_training(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> TrainingPlan:
    """Merge defaults, the config and the overrides (later wins) and check every key and value.

    Needs no model: `build_runner_config` finishes the job once the hook width (d_in) is known.
    """
    where_file = f"config {config}" if isinstance(config, (str, Path)) else "config"
    if overrides is None:
        override_dict: Mapping[str, Any] = {}
    elif isinstance(overrides, Mapping):
        override_dict = overrides
    else:
        override_dict = parse_overrides(list(overrides))
    levels = [
        _split_level(_defaults(), "defaults"),
        _split_level(load_config(config), where_file),
        _split_level(override_dict, "command line"),
    ]

    runner: dict[str, Any] = {}
    sae: dict[str, Any] = {}
    logger: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    origin: dict[tuple[str, str], str] = {}  # (section, key) -> where the value came from, for messages
    architecture: str | None = None
    notes = []
    for level in levels:
        new_arch = level.extra.pop("architecture", None)
        if new_arch is not None:
            new_arch = _check_architecture(new_arch, level.where)
            if architecture is not None and new_arch != architecture:
                # Settings written for the old architecture do not carry over to the new one.
                fits = _sae_fields_by_architecture()[new_arch]
                dropped = [k for k in sae if k not in fits]
                for key in dropped:
                    del sae[key]
                if dropped:
                    notes.append(f"Ignoring {', '.join(dropped)}: not settings of the {new_arch} architecture.")
            architecture = new_arch
        if "expansion_factor" in level.extra:
            sae.pop("d_sae", None)
        if "d_sae" in level.sae:
            extra.pop("expansion_factor", None)
        if "output_name" in level.extra:
            runner.pop("output_path", None)
        if "output_path" in level.runner:
            extra.pop("output_name", None)
        runner.update(level.runner)
        sae.update(level.sae)
        logger.update(level.logger)
        extra.update(level.extra)
        for section, values in (("runner", level.runner), ("sae", level.sae), ("logger", level.logger)):
            origin.update({(section, key): level.where for key in values})
        origin.update({("extra", key): level.where for key in level.extra})
    assert architecture is not None  # the defaults name one

    runner_fields, sae_fields = _runner_fields(), _sae_fields_by_architecture()[architecture]
    typed_runner = {k: _coerce(v, runner_fields[k], k, origin["runner", k]) for k, v in runner.items()}
    typed_logger = {k: _coerce(v, _logger_fields()[k], k, origin["logger", k]) for k, v in logger.items()}
    typed_sae: dict[str, Any] = {"architecture": architecture}
    for key, value in sae.items():
        if key not in sae_fields:
            owners = [a for a, fields in _sae_fields_by_architecture().items() if key in fields]
            raise ConfigError(
                f"{key} ({origin['sae', key]}) is not a setting of the {architecture} architecture "
                f"(it belongs to {', '.join(owners)}). {architecture} takes: {', '.join(sae_fields)}."
            )
        typed_sae[key] = _coerce(value, sae_fields[key], key, origin["sae", key])

    expansion = extra.get("expansion_factor")
    if expansion is not None:
        where = origin["extra", "expansion_factor"]
        expansion = _coerce(expansion, float, "expansion_factor", where)
        if expansion <= 0:
            raise ConfigError(f"expansion_factor ({where}) must be positive, got {expansion}.")
    output_name = extra.get("output_name")
    if output_name is not None:
        output_name = _check_output_name(output_name)
    _check_sizes(typed_runner, typed_sae)
    return TrainingPlan(typed_runner, typed_sae, typed_logger, expansion, output_name, tuple(notes))


def _check_output_name(name: Any) -> str:
    name = str(name)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name):
        raise ConfigError(
            f"output_name {name!r} must be a plain folder name (letters, digits, _ . -); "
            "use output_path for a full path."
        )
    return name


def _check_sizes(runner: Mapping[str, Any], sae: Mapping[str, Any]) -> None:
    for key in ("training_tokens", "train_batch_size_tokens", "context_size", "store_batch_size_prompts"):
        if key in runner and runner[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {runner[key]}.")
    for key in ("d_in", "d_sae"):
        if key in sae and sae[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {sae[key]}.")
    tokens, batch = runner.get("training_tokens", 2_000_000), runner.get("train_batch_size_tokens", 4096)
    if tokens < batch:
        raise ConfigError(
            f"training_tokens ({tokens}) is smaller than one batch (train_batch_size_tokens {batch}): "
            "raise training_tokens or lower the batch size."
        )


# ---------------------------------------------------------------- the SAELens runner config
def build_runner_config(plan: TrainingPlan, d_in: int | None, output_path: str | None, checkpoint_path: str | None):
    """The `LanguageModelSAERunnerConfig` for `plan` at hook width `d_in`.

    `d_in=None` builds a stand-in (d_in = d_sae = 1) that lets SAELens check everything else before the
    model is loaded.
    """
    from sae_lens.config import LanguageModelSAERunnerConfig

    sae = dict(plan.sae)
    if d_in is None:
        sae["d_in"] = sae["d_sae"] = 1
        sae.pop("matryoshka_widths", None)
    else:
        if "d_in" in sae and sae["d_in"] != d_in:
            raise IncompatibleSAEError(
                f"d_in {sae['d_in']} does not match the width {d_in} of hook {plan.runner.get('hook_name')!r}: "
                "drop d_in from the config (saehealth reads it from the model)."
            )
        sae["d_in"] = d_in
        if "d_sae" not in sae:
            sae["d_sae"] = max(1, round((plan.expansion_factor or DEFAULT_EXPANSION_FACTOR) * d_in))
        if plan.architecture == "matryoshka_batchtopk":
            sae["matryoshka_widths"] = _matryoshka_widths(sae.get("matryoshka_widths"), sae["d_sae"])
    runner = dict(plan.runner)
    if runner.get("device", "auto") == "auto":  # SAELens takes a real device: cuda, else mps, else cpu
        runner["device"] = resolve_device("auto")
    # The SAE follows the runner's device and dtype unless its own are set.
    sae.setdefault("device", runner["device"])
    sae.setdefault("dtype", runner.get("dtype", "float32"))
    if _is_local_model(runner.get("model_name", "")) and "model_from_pretrained_kwargs" not in runner:
        # SAELens' default kwargs are for its hub loader; saehealth's loader takes none, so record none
        # (SAE.load_from_disk warns about non-empty ones).
        runner["model_from_pretrained_kwargs"] = {}
    cfg_dict = {
        **runner,
        "sae": sae,
        "logger": dict(plan.logger),
        "output_path": output_path,
        # Given explicitly so SAELens does not append a random run id to it.
        "checkpoint_path": plan.runner.get("checkpoint_path", checkpoint_path),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = LanguageModelSAERunnerConfig.from_dict(cfg_dict)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"SAELens rejected the configuration: {_first_line(exc)}") from exc
    _fit_activation_buffer(cfg, explicit="n_batches_in_buffer" in plan.runner)
    return cfg


def _fit_activation_buffer(cfg, explicit: bool) -> None:
    """SAELens' activation buffer holds n_batches_in_buffer × context_size tokens and must hold a whole
    training batch. Its defaults (20 × 128 < 4096) do not, so unless the user chose a value we size the
    buffer to two training batches; a value the user chose that is too small is an error."""
    positions = len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    needed = -(-cfg.train_batch_size_tokens // positions)
    if explicit and cfg.n_batches_in_buffer < needed:
        raise ConfigError(
            f"n_batches_in_buffer × context_size ({cfg.n_batches_in_buffer} × {positions}) must hold one training "
            f"batch ({cfg.train_batch_size_tokens} tokens): set n_batches_in_buffer to {2 * needed} or more."
        )
    if not explicit:
        cfg.n_batches_in_buffer = max(cfg.n_batches_in_buffer, 2 * needed)


def _matryoshka_widths(widths: list[int] | None, d_sae: int) -> list[int]:
    """Nested widths ending at d_sae: by default d_sae/8, d_sae/4, d_sae/2, d_sae."""
    if not widths:
        return sorted({max(1, d_sae // 8), max(1, d_sae // 4), max(1, d_sae // 2), d_sae})
    if any(w <= 0 or w > d_sae for w in widths) or any(a >= b for a, b in zip(widths, widths[1:], strict=False)):
        raise ConfigError(f"matryoshka_widths {widths} must increase strictly and lie in 1..d_sae ({d_sae}).")
    return widths if widths[-1] == d_sae else [*widths, d_sae]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# ---------------------------------------------------------------- model, hook, data
def check_device(device: str | None) -> None:
    """Raise ConfigError for a device this machine does not have (before anything is loaded on it)."""
    import torch

    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"Unknown device {device!r}: use cpu, cuda, cuda:N or mps.") from exc
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise ConfigError(f"Device {device!r} is not available on this machine: use --device cpu.")


def _is_local_model(name: str) -> bool:
    # A path-like name that does not exist goes to saehealth's loader too, which says so plainly.
    return name == builtin.BUILTIN_MODEL or Path(name).expanduser().is_dir() or name.startswith((".", "/", "~"))


def _is_local_dataset(name: str) -> bool:
    from saehealth.data import LOCAL_FORMATS

    return (
        name == builtin.BUILTIN_DATASET
        or Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or Path(name).suffix in LOCAL_FORMATS
    )


def load_training_model(cfg):
    """The model for a runner config: saehealth's loader for built-in/local models, SAELens' for hub names."""
    name = cfg.model_name
    if _is_local_model(name) and cfg.model_class_name == "HookedTransformer":
        from saehealth.models import load_model

        return load_model(name, device=cfg.llm_device)
    from sae_lens.load_model import load_model as sae_lens_load_model

    try:
        return sae_lens_load_model(
            cfg.model_class_name,
            name,
            device=cfg.llm_device,
            model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
            hook_names=[cfg.hook_name],
        )
    except OSError as exc:  # hub unreachable, gated repo, missing files
        raise ModelError(
            f"Could not load model {name!r} from the Hugging Face hub ({type(exc).__name__}): check network "
            f"access and credentials, or use {builtin.BUILTIN_MODEL!r} or a local model folder."
        ) from exc
    except ValueError as exc:  # TransformerLens: not an official model name
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

        raise ModelError(
            f"Unknown model {name!r}: {_first_line(exc)[:200]}{suggest(name, OFFICIAL_MODEL_NAMES)}"
        ) from exc


def check_model_hook(model, hook_name: str) -> None:
    """Raise IncompatibleSAEError if the model has no such hook, naming the nearest ones."""
    from transformer_lens import HookedTransformer

    from saehealth.models import check_hook

    if isinstance(model, HookedTransformer):
        check_hook(model, hook_name)
    elif hook_name not in model.hook_dict:
        raise IncompatibleSAEError(f"The model has no hook {hook_name!r}.{suggest(hook_name, list(model.hook_dict))}")


def hook_width(model, hook_name: str, hook_head_index: int | None = None) -> int:
    """The activation width SAELens will train on at `hook_name`, read from a 2-token forward pass."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    device = next(model.parameters()).device
    tokens = torch.zeros((1, 2), dtype=torch.long, device=device)
    # The same call SAELens' ActivationsStore makes, so the shape is the one it will see.
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens,
            names_filter=[hook_name],
            stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(hook_name),
            prepend_bos=False,
        )
    shape = cache[hook_name].shape  # [batch, pos, d] or [batch, pos, head, d_head]
    if hook_head_index is not None or len(shape) == 3:
        return int(shape[-1])
    return int(torch.Size(shape[2:]).numel())


def load_training_dataset(dataset_path: str, seed: int = 42):
    """The built-in corpus's train split or a local dataset, documents shuffled with `seed`; None for a
    hub name (SAELens streams it in its stored order).

    SAELens reads documents in order through a buffer of a few batches, and files are often sorted by
    topic (the built-in corpus is, by module): unshuffled, the SAE sees one topic after another and the
    latents that served early topics die by the end.
    """
    if not _is_local_dataset(dataset_path):
        return None
    from saehealth.data import load_dataset

    return load_dataset(dataset_path, split="train").shuffle(seed=seed)


# ---------------------------------------------------------------- running
def train(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    quiet: bool = False,
) -> Path:
    """Train an SAE with SAELens and return its checkpoint folder (`checkpoints/<output_name>/`).

    `config`: a YAML/JSON file, a packaged config name ('demo'), a dict, or None (saehealth's defaults).
    `overrides`: a dict of settings, or command-line tokens like `["--k", "32", "--layer=1"]`.
    Every key, value, the architecture and the hook are checked before training starts; mistakes raise
    `ConfigError`, `IncompatibleSAEError`, `ModelError` or `DataError` with a one-line message.
    """
    from saehealth.output import check_output_folder, staged

    say = (lambda message: None) if quiet else _status
    plan = plan_training(config, overrides)
    for note in plan.notes:
        say(f"[yellow]note:[/] {note}")
    draft = build_runner_config(plan, d_in=None, output_path=None, checkpoint_path=None)
    for device in {draft.device, draft.llm_device, draft.act_store_device}:
        check_device(device)
    known_dir = _final_dir(plan, None)
    if known_dir is not None:  # refuse a folder holding the user's files before even loading the model
        check_output_folder(known_dir, "checkpoint", option=OUTPUT_OPTION)
    model = load_training_model(draft)
    check_model_hook(model, draft.hook_name)
    d_in = hook_width(model, draft.hook_name, draft.hook_head_index)

    final_dir = _final_dir(plan, d_in)
    # SAELens writes the checkpoint into a staging folder that replaces final_dir only when training succeeded.
    with staged(final_dir, "checkpoint", option=OUTPUT_OPTION) as staging:
        cfg = build_runner_config(
            plan,
            d_in,
            output_path=str(staging),
            checkpoint_path=str(final_dir.parent / f"{final_dir.name}-checkpoints"),
        )
        dataset = load_training_dataset(cfg.dataset_path, cfg.seed)
        say(
            f"Training a {cfg.sae.architecture()} SAE (d_in {cfg.sae.d_in} → d_sae {cfg.sae.d_sae}) on "
            f"{cfg.model_name} at {cfg.hook_name}: {cfg.training_tokens:,} tokens of {cfg.dataset_path}"
            f"{' (train split)' if dataset is not None else ''}, on {cfg.device} → {_display(final_dir)}"
        )
        runner = _make_runner(cfg, model, dataset)
        with _quiet_expected_noise(), _token_progress_bar(), _restored_signal_handlers():
            _run(runner)
        _record_location(staging, final_dir)
    say(f"Saved the SAE to {_display(final_dir)}")
    return final_dir


def _run(runner) -> None:
    from sae_lens.training._interruption import InterruptedException

    try:
        runner.run()
    except InterruptedException:  # SAELens' SIGINT/SIGTERM handler: an interrupt like any other
        raise KeyboardInterrupt from None


def _final_dir(plan: TrainingPlan, d_in: int | None) -> Path | None:
    """Where the checkpoint goes; None when that depends on d_in (not yet known) through the default name."""
    if "output_path" in plan.runner and plan.runner["output_path"] is not None:
        return Path(plan.runner["output_path"]).expanduser().absolute()
    name = plan.output_name
    if name is None:
        d_sae = plan.sae.get("d_sae")
        if d_sae is None and d_in is None:
            return None
        d_sae = d_sae or round((plan.expansion_factor or DEFAULT_EXPANSION_FACTOR) * d_in)
        model_slug = Path(plan.runner.get("model_name", builtin.BUILTIN_MODEL)).name
        name = _check_output_name(f"{model_slug}-{plan.runner.get('hook_name')}-{plan.architecture}-{d_sae}")
    return (Path.cwd() / CHECKPOINTS_DIR / name).absolute()


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _make_runner(cfg, model, dataset):
    from sae_lens import LanguageModelSAETrainingRunner

    try:
        with _quiet_expected_noise():
            return LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    except OSError as exc:  # SAELens loading a hub dataset: offline, unknown name, gated
        raise DataError(
            f"Could not load dataset {cfg.dataset_path!r} ({type(exc).__name__}: {_first_line(exc)[:200]}). "
            f"Use {builtin.BUILTIN_DATASET!r}, a local .parquet/.jsonl/.txt file or folder, or check network access."
        ) from exc
    except ValueError as exc:  # e.g. no text/tokens column, pre-tokenized rows shorter than context_size
        raise ConfigError(f"SAELens could not set up training: {_first_line(exc)}") from exc


class _DropExpected(logging.Filter):
    """SAELens warns that override_model/override_dataset make a run irreproducible; here they are not:
    runner_cfg.json names the built-in or local model and dataset, which saehealth loads the same way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You just passed in a")


@contextmanager
def _quiet_expected_noise() -> Iterator[None]:
    sae_lens_logger = logging.getLogger("sae_lens")
    drop = _DropExpected()
    sae_lens_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            # Expected on small corpora read as text: SAELens tokenizes on the fly and loops over epochs.
            warnings.filterwarnings("ignore", message="Dataset is not tokenized")
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="All samples in the training dataset have been exhausted")
            yield
    finally:
        sae_lens_logger.removeFilter(drop)


@contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    """SAELens installs its own SIGINT/SIGTERM handlers for the run and leaves them; put ours back, so
    Ctrl-C after training (e.g. during the demo's evaluation) is a KeyboardInterrupt again."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextmanager
def _token_progress_bar() -> Iterator[None]:
    """Make SAELens' training bar count tokens (tok/s, ETA) and move every step.

    SAELens' bar counts unitless items and advances every 100 steps, which on a short CPU run means
    a bar that sits still. We swap in a tokens bar and a per-step update (loss values every 25 steps);
    if a later SAELens moves these names, its own bar is left as it is.
    """
    import torch
    from sae_lens.training import sae_trainer

    trainer_class = getattr(sae_trainer, "SAETrainer", None)
    base_bar = getattr(sae_trainer, "tqdm", None)
    if trainer_class is None or base_bar is None or not hasattr(trainer_class, "_update_pbar"):
        yield
        return

    class TokenBar(base_bar):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # In a log file (not a terminal) every redraw is a new line: redraw rarely there.
            interactive = sys.stderr.isatty()
            kwargs.update(unit="tok", unit_scale=True, dynamic_ncols=True, mininterval=0.5 if interactive else 15)
            super().__init__(*args, **kwargs)

    def update_every_step(self, step_output, pbar, update_interval: int = 25) -> None:
        # The last batch may overshoot training_tokens; stop the bar at its total rather than past it.
        pbar.update(min(self.cfg.train_batch_size_samples, max(0, (pbar.total or 0) - pbar.n)))
        if self.n_training_steps % update_interval == 0:
            values = {name: value() if callable(value) else value for name, value in step_output.losses.items()}
            losses = ", ".join(
                f"{name}={float(v.detach() if isinstance(v, torch.Tensor) else v):.4g}" for name, v in values.items()
            )
            pbar.set_postfix_str(losses, refresh=False)

    original_update = trainer_class._update_pbar
    sae_trainer.tqdm = TokenBar
    trainer_class._update_pbar = update_every_step
    try:
        yield
    finally:
        sae_trainer.tqdm = base_bar
        trainer_class._update_pbar = original_update


def _record_location(staging: Path, final_dir: Path) -> None:
    """runner_cfg.json records where the SAE lives, not the staging folder it was written to."""
    runner_cfg = staging / "runner_cfg.json"
    if runner_cfg.is_file():
        data = json.loads(runner_cfg.read_text())
        data["output_path"] = str(final_dir)
        runner_cfg.write_text(json.dumps(data))
