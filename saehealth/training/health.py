"""`saehealth train CONFIG --health-every TOKENS`: health checks of the SAE while SAELens trains it.

A `HealthMonitor` (saehealth/monitor.py) is built once on held-out tokens of the training data (the built-in
corpus' validation split; a dataset's validation or test split, else its train split with a warning). SAELens'
trainer calls `_update_pbar(step_output, pbar)` after every step; saehealth already wraps that method for its
token progress bar, and wraps it once more here to run a check each time the training tokens pass the next
multiple of `--health-every` (SAELens' own evaluator is called only when W&B logging is on, so it cannot carry
this). The trainer is not forked: when a later SAELens renames the method, training runs without checks and says so.

Each check is printed, logged to W&B as `health/<metric>` when a W&B run is active, and warns on the way down.
After training, a final check of the saved SAE (with absorption; `--health-absorption-every N` also measures it at
every Nth check) and `training_health.json` plus `training_health.png` (the headline metrics against training
tokens) are written into the checkpoint folder, inside its staging folder, so they appear with the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from saehealth.errors import ConfigError, DataError
from saehealth.report.trajectory_plot import TRAJECTORY_KEYS

HEALTH_JSON = "training_health.json"
HEALTH_PLOT = "training_health.png"
# Options `saehealth train` takes for the checks (they are not SAELens config fields).
OPTIONS = {"health-every": "every", "health-tokens": "tokens", "health-absorption-every": "absorption_every"}


@dataclass(frozen=True)
class HealthOptions:
    """`--health-every` training tokens between checks; `--health-tokens` held-out tokens per check;
    `--health-absorption-every` N: absorption at every Nth check too (0: at the final check only)."""

    every: int
    tokens: int = 4096
    absorption_every: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "tokens", "absorption_every"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "absorption_every" else 1)
            ):
                flag = "--health-" + {"every": "every", "tokens": "tokens"}.get(name, "absorption-every")
                raise ConfigError(f"{flag} must be a whole number above 0, got {value!r}.")


def pop_health_args(args: Sequence[str]) -> tuple[list[str], HealthOptions | None]:
    """`saehealth train`'s arguments without the --health-* options, and those options (None without
    --health-every)."""
    from saehealth.training.configs import parse_value

    rest, found, i = [], {}, 0
    args = list(args)
    while i < len(args):
        key, has_value, value = args[i].removeprefix("--").partition("=")
        if args[i].startswith("--") and key in OPTIONS:
            if not has_value:
                if i + 1 >= len(args):
                    raise ConfigError(f"--{key} needs a value (a number of tokens).")
                value, i = args[i + 1], i + 1
            found[OPTIONS[key]] = parse_value(value)
        else:
            rest.append(args[i])
        i += 1
    if not found:
        return rest, None
    if "every" not in found:
        raise ConfigError("--health-tokens and --health-absorption-every go with --health-every TOKENS.")
    return rest, HealthOptions(**found)


class TrainingHealth:
    """The checks of one training run: the monitor, the schedule, the log and the files at the end."""

    def __init__(self, options: HealthOptions, model, cfg, say: Callable[[str], None]):
        from saehealth.monitor import HealthMonitor

        self.options, self.say = options, say
        tokens = _held_out(model, cfg, options.tokens, say)
        self.monitor = HealthMonitor(model, cfg.hook_name, tokens, device=str(model.cfg.device))
        self.next_at = options.every
        self.seen = 0  # training tokens so far: SAELens trains whole batches, so it can end past training_tokens

    def after_step(self, trainer) -> None:
        """Run a check when the training tokens passed the next multiple of --health-every."""
        self.seen = seen = int(trainer.n_training_samples)
        if seen < self.next_at:
            return
        while self.next_at <= seen:
            self.next_at += self.options.every
        n = len(self.monitor.history) + 1
        absorption = self.options.absorption_every > 0 and n % self.options.absorption_every == 0
        sae = _as_inference(trainer.sae, trainer.activation_scaler)
        self._log(self.monitor.check(sae, step=int(trainer.n_training_steps), tokens_seen=seen, absorption=absorption))

    def finish(self, sae, tokens_seen: int, folder: Path) -> None:
        """The final check (with absorption) of the trained SAE, then training_health.json and its plot.
        `tokens_seen`: the configured training tokens, used where no step was seen."""
        tokens_seen = self.seen or tokens_seen
        history, step = self.monitor.history, None
        if history and history[-1].tokens_seen == tokens_seen:  # the last step's check: the final one replaces it
            step = history.pop().step
        self._log(self.monitor.check(sae, step=step, tokens_seen=tokens_seen, absorption=True))
        checks = [check.to_dict() for check in self.monitor.history]
        document = {"hook": self.monitor.hook, "held_out_tokens": self.monitor.n_tokens,
                    "every": self.options.every, "checks": checks}  # fmt: skip
        (folder / HEALTH_JSON).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        plot_trajectory([c["tokens_seen"] for c in checks], [c["metrics"] for c in checks], folder / HEALTH_PLOT)

    def _log(self, check) -> None:
        m = check.metrics
        shown = ", ".join(f"{k} {m[k]:.4g}" for k in TRAJECTORY_KEYS if m.get(k) is not None)
        self.say(f"health @ {check.tokens_seen:,} tokens: {shown}")
        for warning in check.warnings:
            self.say(f"[yellow]health warning:[/] {warning}")
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is not None:  # SAELens' run, while it is open (log_to_wandb); its steps are training steps
            values = {f"health/{k}": v for k, v in m.items() if isinstance(v, (int, float))}
            wandb.log({**values, "health/tokens_seen": check.tokens_seen}, step=check.step)


class _Scaled(torch.nn.Module):
    """A training SAE as it will be saved: inputs scaled by SAELens' activation scaler during training, the
    scale folded in at the end; mid-training it is applied here (encode(x·s), decode(z)/s)."""

    def __init__(self, sae, scale: float):
        super().__init__()
        self.sae, self.scale = sae, scale

    @property
    def W_dec(self):  # noqa: N802
        return self.sae.W_dec / self.scale

    def encode(self, x):
        return self.sae.encode(x * self.scale)

    def decode(self, z):
        return self.sae.decode(z) / self.scale


def _as_inference(sae, scaler):
    scale = getattr(scaler, "scaling_factor", None)
    return sae if scale is None else _Scaled(sae, float(scale))


def _held_out(model, cfg, n_tokens: int, say) -> torch.Tensor:
    from saehealth.monitor import held_out_tokens

    for split in ("validation", "test"):
        try:
            return held_out_tokens(model, n_tokens, cfg.context_size, dataset=cfg.dataset_path, split=split)
        except DataError:
            continue
    say(f"[yellow]warning:[/] {cfg.dataset_path} has no validation or test split: health checks use 'train'.")
    return held_out_tokens(model, n_tokens, cfg.context_size, dataset=cfg.dataset_path, split="train")


@contextmanager
def checks_after_each_step(health: TrainingHealth | None) -> Iterator[None]:
    """Wrap SAELens' per-step `SAETrainer._update_pbar` so that `health.after_step(trainer)` runs after it."""
    if health is None:
        yield
        return
    from sae_lens.training import sae_trainer

    trainer_class = getattr(sae_trainer, "SAETrainer", None)
    original = getattr(trainer_class, "_update_pbar", None)
    if original is None:
        health.say("[yellow]warning:[/] this SAELens has no per-step hook saehealth knows: only the final check runs.")
        yield
        return

    def update_and_check(self, step_output, pbar, *args, **kwargs):
        original(self, step_output, pbar, *args, **kwargs)
        health.after_step(self)

    trainer_class._update_pbar = update_and_check
    try:
        yield
    finally:
        trainer_class._update_pbar = original


def plot_trajectory(tokens: list, metrics: list[dict], path: Path, title: str = "Health during training") -> None:
    """The headline metrics against training tokens (report/trajectory_plot.py), as a PNG."""
    from saehealth.report.trajectory_plot import trajectory_figure

    fig = trajectory_figure(tokens, metrics, title=title)
    if fig is not None:
        fig.savefig(path, dpi=100)
