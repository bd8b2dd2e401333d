"""Training itself: the model, hook and data handed to SAELens, the runner under a progress bar, the checkpoint
written through the output rule."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saehealth import builtin
from saehealth.errors import ConfigError, DataError, IncompatibleSAEError, ModelError, suggest
from saehealth.training.configs import (
    CHECKPOINTS_DIR,
    DEFAULT_EXPANSION_FACTOR,
    OUTPUT_OPTION,
    first_line,
    is_local_dataset,
    is_local_model,
)
from saehealth.training.plan import TrainingPlan, build_runner_config, check_output_name, plan_training

_console = None


def _status(message: str) -> None:
    """One line of progress on stderr (stdout is left for the checkpoint path)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    _console.print(message, soft_wrap=True)


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


def load_training_model(cfg):
    """The model for a runner config: saehealth's loader for built-in/local models, SAELens' for hub names."""
    name = cfg.model_name
    if is_local_model(name) and cfg.model_class_name == "HookedTransformer":
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
            f"Unknown model {name!r}: {first_line(exc)[:200]}{suggest(name, OFFICIAL_MODEL_NAMES)}"
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
    if not is_local_dataset(dataset_path):
        return None
    from saehealth.data import load_dataset

    return load_dataset(dataset_path, split="train").shuffle(seed=seed)


# ---------------------------------------------------------------- running
def train(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    quiet: bool = False,
    health=None,
) -> Path:
    """Train an SAE with SAELens and return its checkpoint folder (`checkpoints/<output_name>/`).

    `config`: a YAML/JSON file, a packaged config name ('demo'), a dict, or None (saehealth's defaults).
    `overrides`: a dict of settings, or command-line tokens like `["--k", "32", "--layer=1"]`.
    Every key, value, the architecture and the hook are checked before training starts; mistakes raise
    `ConfigError`, `IncompatibleSAEError`, `ModelError` or `DataError` with a one-line message.
    `health`: a `training.health.HealthOptions` to check the SAE's health every N training tokens on held-out
    tokens (written to training_health.json and .png in the checkpoint folder).
    """
    from saehealth.output import check_output_folder, display_path, staged

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
            f"{' (train split)' if dataset is not None else ''}, on {cfg.device} → {display_path(final_dir)}"
        )
        runner = _make_runner(cfg, model, dataset)
        tracker = None
        if health is not None:
            from saehealth.training.health import TrainingHealth, checks_after_each_step

            tracker = TrainingHealth(health, model, cfg, say)
        with _quiet_expected_noise(), _token_progress_bar(), _restored_signal_handlers():
            if tracker is None:
                _run(runner)
            else:
                with checks_after_each_step(tracker):
                    _run(runner)
        if tracker is not None:
            tracker.finish(runner.sae, int(cfg.training_tokens), staging)
        _record_location(staging, final_dir)
    say(f"Saved the SAE to {display_path(final_dir)}")
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
        name = check_output_name(f"{model_slug}-{plan.runner.get('hook_name')}-{plan.architecture}-{d_sae}")
    return (Path.cwd() / CHECKPOINTS_DIR / name).absolute()


def _make_runner(cfg, model, dataset):
    from sae_lens import LanguageModelSAETrainingRunner

    try:
        with _quiet_expected_noise():
            return LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    except OSError as exc:  # SAELens loading a hub dataset: offline, unknown name, gated
        raise DataError(
            f"Could not load dataset {cfg.dataset_path!r} ({type(exc).__name__}: {first_line(exc)[:200]}). "
            f"Use {builtin.BUILTIN_DATASET!r}, a local .parquet/.jsonl/.txt file or folder, or check network access."
        ) from exc
    except ValueError as exc:  # e.g. no text/tokens column, pre-tokenized rows shorter than context_size
        raise ConfigError(f"SAELens could not set up training: {first_line(exc)}") from exc


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
