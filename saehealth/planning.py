"""What an evaluation will run, resolved from the checkpoint and the user's options before any work starts.

A `Plan` names the model, the hook and splice site, the context length, the dataset and split and the number of
sequences of one SAE. `saehealth eval` makes one; `saehealth compare` and an eval of a run folder make one per
SAE against a shared model and dataset (`compare.py` decides what they share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from saehealth import builtin, distributed
from saehealth.config import DEFAULT_MAX_TOKENS, EvalConfig
from saehealth.data import load_dataset, sequence_batches
from saehealth.errors import ConfigError, DataError, IncompatibleSAEError
from saehealth.models import check_hook
from saehealth.replay import SpliceSite, sae_view, splice_site


@dataclass
class Plan:
    """What the pass over the tokens needs for one SAE."""

    loaded: Any  # saehealth.loading.LoadedSAE
    model_name: str
    hook: str
    model: Any  # HookedTransformer (None for an activation cache scored without --model)
    site: SpliceSite | None  # None for an activation cache: nothing is spliced
    context: int
    dataset_name: str
    split: str
    dataset: Any  # datasets.Dataset (an activations.scoring.CacheData for an activation cache)
    n_sequences: int
    activations: str | None = None  # the activation cache's layout, when scored from one
    special_tokens_known: bool = True  # False for a cache without token ids: nothing could be masked
    prepend_bos: bool = True  # every sequence starts with BOS (`prepend_bos_of`)
    route: Any = None  # routed SAEs: the router resolved on the model (saehealth.routed.passes.RoutedSite)

    @property
    def sae(self):
        return self.loaded.sae


def model_name(config: EvalConfig, loaded) -> str:
    """--model, else the model the checkpoint names."""
    name = config.model or loaded.model_name
    if name is None:
        raise ConfigError(f"{config.sae_path} does not say which model it was trained on: pass --model NAME.")
    return name


def hook_name(config: EvalConfig, loaded) -> str:
    """--hook, else the checkpoint's hook moved to --layer, else the checkpoint's hook."""
    if config.hook:
        return config.hook
    if config.layer is not None:
        if loaded.hook_name and loaded.hook_name.startswith("blocks."):
            parts = loaded.hook_name.split(".")
            parts[1] = str(config.layer)
            return ".".join(parts)
        return f"blocks.{config.layer}.hook_resid_post"
    if loaded.hook_name is None:
        raise ConfigError(f"{config.sae_path} does not say which hook it reads: pass --hook NAME or --layer N.")
    return loaded.hook_name


def site_of(config: EvalConfig, loaded, model) -> tuple[str, SpliceSite]:
    """(input hook, splice site) of the SAE on this model, with its hooks and widths checked."""
    hook = hook_name(config, loaded)
    check_hook(model, hook)
    output_hook = loaded.output_hook_name or hook
    check_hook(model, output_hook)
    site = splice_site(output_hook, input_hook=hook, head_index=loaded.hook_head_index)
    check_width(model, site, loaded.sae, config.device)
    return hook, site


def context_length(config: EvalConfig, model, loaded, notes: list[str] | None = None) -> int:
    """Tokens per sequence: --context-length, else the checkpoint's, capped at the model's context (with a note)."""
    context = config.context_length or loaded.context_size or model.cfg.n_ctx
    if context > model.cfg.n_ctx:
        if config.context_length:
            raise ConfigError(
                f"--context-length {context} is longer than the model's context ({model.cfg.n_ctx}): lower it."
            )
        if notes is not None:
            notes.append(
                f"The SAE was trained on contexts of {context} tokens, longer than the model's {model.cfg.n_ctx}: "
                f"evaluated on {model.cfg.n_ctx}-token sequences."
            )
        context = model.cfg.n_ctx
    if context < 2:
        raise ConfigError("The context length must be at least 2 tokens to score next-token predictions.")
    return context


def prepend_bos_of(loaded, model) -> bool:
    """Whether sequences start with BOS: as the SAE records it (SAELens `prepend_bos`), else as its model family
    does in TransformerLens and SAELens (`default_prepend_bos`: True for most families, Gemma included)."""
    if loaded.prepend_bos is not None:
        return loaded.prepend_bos
    return bool(getattr(model.cfg, "default_prepend_bos", True))


def choose_dtype(config: EvalConfig, loaded) -> tuple[str, str]:
    """(dtype of the evaluation, why): --dtype when given, else the dtype the SAE was trained in
    (`recorded_dtype`), else float32."""
    if config.dtype is not None:
        return config.dtype, "--dtype"
    return loaded.training_dtype() or ("float32", "the default: the checkpoint records no dtype")


def dtype_note(config: EvalConfig, loaded, source: str) -> str | None:
    """What the result says about its dtype: its source when not float32 by default, a warning when --dtype
    differs from the dtype the SAE was trained in, and that bfloat16 is slow on a CPU."""
    trained = loaded.training_dtype()
    notes = []
    if source != "--dtype" and trained is not None and config.dtype != "float32":  # float32: as always, no news
        notes.append(f"Evaluated in {config.dtype}, the dtype the SAE was trained in ({source}); --dtype overrides.")
    elif trained is not None and trained[0] != config.dtype:
        name = trained[0]
        notes.append(f"The SAE was trained in {name} ({trained[1]}) but is evaluated in {config.dtype} (--dtype).")
    if config.dtype in ("bfloat16", "float16") and str(config.device).startswith("cpu"):
        notes.append(f"{config.dtype} on a CPU is several times slower than float32 (pass --dtype float32 for speed).")
    return " ".join(notes) or None


def context_note(context: int, loaded) -> str | None:
    """The note for a context longer than the SAE's training context (allowed: the by-position diagnostics show
    what happens past it), None otherwise."""
    trained = getattr(loaded, "context_size", None)
    if not trained or context <= trained:
        return None
    return (
        f"Evaluated at context length {context}, beyond the SAE's training context ({trained}): positions past "
        f"{trained} are outside what it was trained on (see the by-position plot, which marks {trained})."
    )


def dataset_choice(config: EvalConfig, model: str, loaded, notes: list[str]) -> tuple[str, str]:
    """(dataset, split): the options', else the built-in corpus for the built-in model or the checkpoint's; a
    held-out split where there is one (a note says when it had to fall back to 'train')."""
    name = config.dataset
    if name is None:
        name = builtin.BUILTIN_DATASET if model == builtin.BUILTIN_MODEL else loaded.dataset_path
    if name is None:
        raise ConfigError(f"{config.sae_path} does not record its training dataset: pass --dataset NAME.")
    if config.split is not None:
        return name, config.split
    if name == builtin.BUILTIN_DATASET:
        return name, "validation"  # held out from training
    for split in ("validation", "test"):
        try:
            load_dataset(name, split)
            return name, split
        except DataError:
            continue
    notes.append(f"{name} has no validation or test split: evaluated on 'train', which may overlap training.")
    return name, "train"


def sequences_wanted(config: EvalConfig, context: int) -> int:
    """How many sequences of `context` tokens the options ask for (--num-samples, --tokens, or the default)."""
    if config.num_samples is not None:
        return config.num_samples
    tokens = config.n_tokens if config.n_tokens is not None else DEFAULT_MAX_TOKENS
    return max(1, math.ceil(tokens / context))


class _StopForward(Exception):
    """Raised from a hook to stop a probe forward pass once the activation's width is known."""


def check_width(model, site: SpliceSite, sae, device: str) -> None:
    """The SAE's input (and, for transcoders, output) width must match what it sees at its hooks."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=device)
    widths: dict[str, int] = {}
    last = site.hook_name

    def capture(activation, hook):
        heads = site.input_head_dims if hook.name == site.input_hook else site.head_dims
        if site.head_index is not None and not 0 <= site.head_index < activation.shape[-2]:
            raise IncompatibleSAEError(
                f"The SAE reads head {site.head_index} but {hook.name} has {activation.shape[-2]} heads: "
                "check --model and hook_head_index in its cfg.json."
            )
        widths[hook.name] = sae_view(activation, heads, site.head_index).shape[-1]  # what the SAE sees
        if hook.name == last and len(widths) == len({site.input_hook, site.hook_name}):
            raise _StopForward

    names = sorted({site.input_hook, site.hook_name})
    try:
        with model.hooks(fwd_hooks=[(name, capture) for name in names]), torch.no_grad():
            model(probe)
    except _StopForward:
        pass
    expected = {site.input_hook: int(sae.cfg.d_in)}
    if site.is_transcoder:
        expected[site.hook_name] = int(getattr(sae.cfg, "d_out", sae.cfg.d_in))
    for name, width in expected.items():
        if name in widths and widths[name] != width:
            side = "d_in" if name == site.input_hook else "d_out"
            raise IncompatibleSAEError(
                f"The SAE's {side} is {width} but {name} has width {widths[name]}: "
                "check --model and --hook (the SAE was trained on another model or hook)."
            )


def check_ranks(n_sequences: int) -> None:
    """More torchrun processes than sequences would leave a rank with nothing to do: refused before the pass."""
    world = distributed.ranks().world_size
    if world > n_sequences:
        raise ConfigError(
            f"{world} torchrun processes for {n_sequences} sequence(s): evaluate more tokens (--tokens) or run "
            f"with at most {n_sequences} processes."
        )


def token_batches(plan: Plan, config: EvalConfig):
    """This process's batches of the evaluation's sequences (its shard under torchrun)."""
    here = distributed.ranks()
    return sequence_batches(
        plan.dataset,
        plan.model.tokenizer,
        plan.context,
        plan.n_sequences,
        config.batch_size,
        config.seed,
        shard=(here.rank, here.world_size),
        prepend_bos=plan.prepend_bos,
    )


def reference_sequence(plan: Plan, config: EvalConfig):
    """The evaluation's first sequence, (1, context), on every rank: the reference mean of the variance sums."""
    first = sequence_batches(
        plan.dataset, plan.model.tokenizer, plan.context, 1, 1, config.seed, prepend_bos=plan.prepend_bos
    )
    return next(iter(first), None)


def share_of_tokens(plan: Plan) -> int:
    """Tokens this process will replay, for its progress bar."""
    here = distributed.ranks()
    sequences = len(range(here.rank, plan.n_sequences, here.world_size))
    return sequences * plan.context
