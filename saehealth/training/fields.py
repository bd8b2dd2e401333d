"""What SAELens' runner config accepts (its fields per section and architecture), and values coerced to their
types."""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Union

from saehealth.errors import ConfigError, suggest
from saehealth.training.configs import SAEHEALTH_KEYS, SUBCONFIGS


# ---------------------------------------------------------------- what SAELens accepts
@lru_cache(maxsize=1)
def runner_fields() -> dict[str, Any]:
    from sae_lens.config import LanguageModelSAERunnerConfig

    hints = typing.get_type_hints(LanguageModelSAERunnerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(LanguageModelSAERunnerConfig) if f.name not in SUBCONFIGS}


@lru_cache(maxsize=1)
def logger_fields() -> dict[str, Any]:
    from sae_lens.config import LoggingConfig

    return typing.get_type_hints(LoggingConfig)


@lru_cache(maxsize=1)
def sae_fields_by_architecture() -> dict[str, dict[str, Any]]:
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    by_arch = {}
    for name, (_, config_class) in SAE_TRAINING_CLASS_REGISTRY.items():
        hints = typing.get_type_hints(config_class)
        # metadata is written by SAELens' runner (model, hook, dataset), never by the user.
        by_arch[name] = {f.name: hints[f.name] for f in dataclasses.fields(config_class) if f.name != "metadata"}
    return by_arch


def architectures() -> list[str]:
    """Every SAE architecture SAELens can train (its training registry)."""
    return list(sae_fields_by_architecture())


def all_sae_fields() -> set[str]:
    return {name for fields in sae_fields_by_architecture().values() for name in fields}


def all_known_keys() -> list[str]:
    return [*runner_fields(), *SUBCONFIGS, *SAEHEALTH_KEYS, *sorted(all_sae_fields()), *logger_fields()]


def check_architecture(value: Any, where: str) -> str:
    valid = architectures()
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(
            f"Unknown architecture {value!r} ({where}).{suggest(str(value), valid)} Valid: {', '.join(valid)}."
        )
    return value


# ---------------------------------------------------------------- typed values
def coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
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
