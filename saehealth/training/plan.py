"""A training request merged from defaults, a config and overrides, checked key by key, then built into
SAELens' `LanguageModelSAERunnerConfig` once the hook width is known."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saehealth import builtin
from saehealth.config import resolve_device
from saehealth.errors import ConfigError, IncompatibleSAEError, suggest
from saehealth.training.configs import (
    DEFAULT_EXPANSION_FACTOR,
    DEFAULT_HOOK,
    SAEHEALTH_KEYS,
    SUBCONFIGS,
    first_line,
    is_local_model,
    load_config,
    parse_overrides,
)
from saehealth.training.fields import (
    all_known_keys,
    all_sae_fields,
    check_architecture,
    coerce,
    logger_fields,
    runner_fields,
    sae_fields_by_architecture,
)


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
        elif key in runner_fields():
            level.runner[key] = value
        elif key in all_sae_fields():
            level.sae[key] = value
        elif key in logger_fields():
            level.logger[key] = value
        else:
            raise ConfigError(f"Unknown setting {key!r} ({where}).{suggest(key, all_known_keys()) or _FIELDS_HINT}")
    _apply_layer(level)
    if "expansion_factor" in level.extra and "d_sae" in level.sae:
        raise ConfigError(f"Give d_sae or expansion_factor, not both ({where}).")
    if "output_name" in level.extra and "output_path" in level.runner:
        raise ConfigError(f"Give output_name or output_path, not both ({where}).")
    return level


_FIELDS_HINT = " Settings are LanguageModelSAERunnerConfig fields (see `saehealth train --help`)."


def _route_nested(level: _Level, head: str, key: str, value: Any) -> None:
    if head == "logger":
        if key not in logger_fields():
            raise ConfigError(
                f"Unknown setting logger.{key} ({level.where}).{suggest(key, logger_fields())} "
                f"logger settings: {', '.join(logger_fields())}."
            )
        level.logger[key] = value
    elif key == "architecture":
        level.extra["architecture"] = value
    elif key == "metadata":
        pass  # written by SAELens' runner from the model, hook and dataset; an old runner_cfg.json carries one
    elif key in all_sae_fields():
        level.sae[key] = value
    else:
        raise ConfigError(
            f"Unknown setting sae.{key} ({level.where}).{suggest(key, sorted(all_sae_fields())) or _FIELDS_HINT}"
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
            new_arch = check_architecture(new_arch, level.where)
            if architecture is not None and new_arch != architecture:
                # Settings written for the old architecture do not carry over to the new one.
                fits = sae_fields_by_architecture()[new_arch]
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

    runner_types, sae_fields = runner_fields(), sae_fields_by_architecture()[architecture]
    typed_runner = {k: coerce(v, runner_types[k], k, origin["runner", k]) for k, v in runner.items()}
    typed_logger = {k: coerce(v, logger_fields()[k], k, origin["logger", k]) for k, v in logger.items()}
    typed_sae: dict[str, Any] = {"architecture": architecture}
    for key, value in sae.items():
        if key not in sae_fields:
            owners = [a for a, fields in sae_fields_by_architecture().items() if key in fields]
            raise ConfigError(
                f"{key} ({origin['sae', key]}) is not a setting of the {architecture} architecture "
                f"(it belongs to {', '.join(owners)}). {architecture} takes: {', '.join(sae_fields)}."
            )
        typed_sae[key] = coerce(value, sae_fields[key], key, origin["sae", key])

    expansion = extra.get("expansion_factor")
    if expansion is not None:
        where = origin["extra", "expansion_factor"]
        expansion = coerce(expansion, float, "expansion_factor", where)
        if expansion <= 0:
            raise ConfigError(f"expansion_factor ({where}) must be positive, got {expansion}.")
    output_name = extra.get("output_name")
    if output_name is not None:
        output_name = check_output_name(output_name)
    _check_sizes(typed_runner, typed_sae)
    return TrainingPlan(typed_runner, typed_sae, typed_logger, expansion, output_name, tuple(notes))


def check_output_name(name: Any) -> str:
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
    if is_local_model(runner.get("model_name", "")) and "model_from_pretrained_kwargs" not in runner:
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
        raise ConfigError(f"SAELens rejected the configuration: {first_line(exc)}") from exc
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
