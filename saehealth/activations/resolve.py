"""An evaluation from an activation cache: the SAE checked against the cache before anything runs.

The checks, each a one-line error: the cache's layout and contents (`open_activations`), a transcoder (its
target is another hook's activation, which a one-hook cache lacks), the hook the cache records against the
SAE's, the width, the sequence length against --context-length, and, for a cache with token ids, a tokenizer
to find BOS/EOS/PAD among them. The model is loaded only when --model asks for it (absorption prompts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from saehealth import builtin
from saehealth.activations import ActivationSource, CacheInfo, open_activations
from saehealth.activations.scoring import CacheData
from saehealth.config import EvalConfig
from saehealth.errors import ConfigError, IncompatibleSAEError, ModelError
from saehealth.result import AGREEMENT_KEYS, DOWNSTREAM_KEYS

DOWNSTREAM_NOT_MEASURED = (
    "an activation cache has no model to splice into: evaluate with --model instead of --activations"
)
UNKNOWN_MODEL = "unknown"


@dataclass
class CacheResolution:
    """What an evaluation from a cache runs with (the counterpart of a replay's model, site and dataset)."""

    hook: str
    model_name: str
    model: Any | None  # a HookedTransformer when --model was given, else None
    context: int  # tokens per sequence (a flat cache's blocks)
    data: CacheData
    n_sequences: int  # sequences asked for (all the cache holds, unless --tokens/--num-samples)
    special_tokens_known: bool  # False: no token ids, every position is scored
    notes: list[str] = field(default_factory=list)
    not_measured: dict[str, str] = field(default_factory=dict)

    @property
    def info(self) -> CacheInfo:
        return self.data.source.info


def resolve_cache(
    config: EvalConfig, loaded, hook: str | None, model=None, source: ActivationSource | None = None
) -> CacheResolution:
    """Check `loaded` (a LoadedSAE) against the cache `config.activations` and settle what the pass reads.

    `hook` is the one the options or the checkpoint name (None: take the cache's); `model` and `source` are
    used as given when the caller has them already (compare)."""
    source = source or open_activations(config.activations, hook)
    info = source.info
    notes: list[str] = []
    hook = hook or info.hook_name
    if hook is None:
        raise ConfigError(f"Neither {config.sae_path} nor the cache says which hook the SAE reads: pass --hook NAME.")
    if loaded.output_hook_name and loaded.output_hook_name != hook:
        raise IncompatibleSAEError(
            f"{config.sae_path} is a transcoder scored against {loaded.output_hook_name}, which a cache of one "
            "hook does not hold: evaluate it with the model instead of --activations."
        )
    if info.hook_name is not None and info.hook_name != hook:
        raise IncompatibleSAEError(
            f"The cache holds {info.hook_name} activations but the SAE reads {hook}: point --activations at a "
            f"cache of {hook} (or pass --hook if the SAE's hook is mislabelled)."
        )
    d_in = int(loaded.sae.cfg.d_in)
    if info.d_in != d_in:
        raise IncompatibleSAEError(
            f"The SAE's d_in is {d_in} but the cache's activations are {info.d_in} wide: use a cache of the SAE's "
            "model and hook."
        )
    context = _context(config, loaded, info)
    model_name = config.model or loaded.model_name or info.model_name or UNKNOWN_MODEL
    if info.model_name and loaded.model_name and info.model_name != loaded.model_name:
        notes.append(f"The cache records model {info.model_name}, the SAE {loaded.model_name}.")
    if config.model and model is None:
        from saehealth.models import check_hook, load_model

        model = load_model(
            config.model,
            device=config.device,
            dtype=config.dtype,
            from_pretrained_kwargs=loaded.model_from_pretrained_kwargs,
        )
        check_hook(model, hook)

    tokenizer = None
    if info.has_token_ids and not config.include_special_tokens:
        tokenizer = model.tokenizer if model is not None else _tokenizer(model_name)
    elif not info.has_token_ids:
        notes.append("The cache keeps no token ids, so BOS/EOS/PAD positions could not be masked: all are scored.")
    wanted = _sequences_wanted(config, context)
    available = math.ceil(info.n_tokens / context)
    stored = str(info.dtype).removeprefix("torch.")
    converted = f", read as {config.dtype}" if stored != config.dtype else ""
    notes.append(
        f"Scored from {info.description} {info.path} ({info.n_tokens:,} tokens of {stored} activations{converted}): "
        "no model ran, so loss recovered, ΔCE and KL are not measured."
    )
    if not info.keeps_sequences:
        notes.append(
            f"The cache does not keep sequences apart: standard errors treat each block of {context} consecutive "
            "tokens as a sequence."
        )
    return CacheResolution(
        hook=hook,
        model_name=model_name,
        model=model,
        context=context,
        data=CacheData(source, tokenizer, wanted),
        n_sequences=wanted if wanted is not None else available,
        special_tokens_known=info.has_token_ids,
        notes=notes,
        not_measured=dict.fromkeys(DOWNSTREAM_KEYS + AGREEMENT_KEYS, DOWNSTREAM_NOT_MEASURED),
    )


def cache_context(config: EvalConfig, loaded_saes: list) -> int:
    """The sequence length of an evaluation of `loaded_saes` over the cache: the cache's when its layout fixes
    one, else --context-length, else the one the SAEs record (they must agree)."""
    info = open_activations(config.activations, config.hook or loaded_saes[0].hook_name).info
    if info.sequence_length is not None or config.context_length is not None:
        return _context(config, loaded_saes[0], info)
    recorded = sorted({int(loaded.context_size) for loaded in loaded_saes if loaded.context_size})
    if len(recorded) > 1:
        raise ConfigError(
            f"The SAEs record different context lengths ({', '.join(map(str, recorded))}) and {info.path} is a flat "
            "stream of tokens: pass --context-length N, the length of the sequences it was cut from."
        )
    if not recorded:
        raise ConfigError(_NEEDS_CONTEXT.format(path=info.path))
    return recorded[0]


_NEEDS_CONTEXT = (
    "{path} is a flat stream of tokens and the SAE records no context length: pass --context-length N, the length "
    "of the sequences it was cut from (standard errors treat such blocks as sequences)."
)


def _context(config: EvalConfig, loaded, info: CacheInfo) -> int:
    if info.sequence_length is not None:
        if config.context_length is not None and config.context_length != info.sequence_length:
            raise ConfigError(
                f"--context-length {config.context_length} differs from the cache's sequences of "
                f"{info.sequence_length} tokens: drop --context-length."
            )
        return info.sequence_length
    context = config.context_length or loaded.context_size
    if not context:
        raise ConfigError(_NEEDS_CONTEXT.format(path=info.path))
    return int(context)


def _sequences_wanted(config: EvalConfig, context: int) -> int | None:
    if config.num_samples is not None:
        return config.num_samples
    if config.n_tokens is not None:
        return max(1, math.ceil(config.n_tokens / context))
    return None


def _tokenizer(model_name: str):
    """The model's tokenizer alone (its special tokens mask the cache's token ids), without the model."""
    if model_name == builtin.BUILTIN_MODEL:
        return builtin.load_builtin_tokenizer()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_name)
    except Exception as exc:  # offline, unknown name, missing files: several exception classes
        raise ModelError(
            f"Could not load the tokenizer of {model_name!r} to mask BOS/EOS/PAD in the cache's token_ids "
            f"({type(exc).__name__}): pass --include-special-tokens to score every position, or --model NAME."
        ) from exc
