"""`saehealth eval`: load an SAE, replay real model activations through it, score every metric.

The orchestration only: settings are resolved from the checkpoint and the user's options, the one pass
lives in `replay.py`, the arithmetic in `metrics/`, verdicts in `thresholds.py`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from saehealth import builtin
from saehealth.config import DEFAULT_MAX_TOKENS, EvalConfig
from saehealth.data import load_dataset, sequence_batches, special_token_mask
from saehealth.errors import ConfigError, DataError, IncompatibleSAEError
from saehealth.fingerprint import weights_fingerprint
from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.downstream import DownstreamAccumulator, downstream_totals
from saehealth.metrics.geometry import geometry_metrics
from saehealth.metrics.reconstruction import ReconstructionAccumulator
from saehealth.metrics.sparsity import SparsityAccumulator
from saehealth.models import check_hook, load_model
from saehealth.replay import ReplayCache, SpliceSite, readout, replay_batch, sae_view, splice_site
from saehealth.result import (
    ABSORPTION_KEYS,
    GEOMETRY_KEYS,
    METRIC_KEYS,
    EvalResult,
    EvalSettings,
    Provenance,
    SAEInfo,
    load_result,
)

# Per-sequence totals kept for standard errors (see metrics/clusters.py).
SEQUENCE_QUANTITIES = ("n_tokens", "l0", "sse", "sst", "n_pred", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")
# metric -> (numerator, denominator) as {quantity: coefficient}; value = Σnum / Σden (+ offset below).
RATIO_METRICS = {
    "loss_recovered": ({"ce_zero": 1, "ce_sae": -1}, {"ce_zero": 1, "ce_clean": -1}),
    "delta_ce": ({"ce_sae": 1, "ce_clean": -1}, {"n_pred": 1}),
    "kl_div_score": ({"kl_sae": 1}, {"kl_zero": 1}),  # 1 − ratio: same standard error
    "explained_variance": ({"sse": 1}, {"sst": 1}),  # 1 − ratio: same standard error
    "l0": ({"l0": 1}, {"n_tokens": 1}),
}


@dataclass
class PassOutput:
    """Accumulated state after the pass over the evaluation tokens."""

    metrics: dict
    uncertainty: dict
    details: dict
    n_sequences: int
    tokens_run: int
    tokens_scored: int


@dataclass
class Plan:
    """What the pass over the tokens needs, resolved from the checkpoint and the options."""

    loaded: Any  # saehealth.loading.LoadedSAE
    model_name: str
    hook: str
    model: Any  # HookedTransformer
    site: SpliceSite
    context: int
    dataset_name: str
    split: str
    dataset: Any  # datasets.Dataset
    n_sequences: int

    @property
    def sae(self):
        return self.loaded.sae


def evaluate(
    sae_path: str | Path | None = None, *, config: EvalConfig | None = None, console=None, **options
) -> EvalResult:
    """Evaluate one SAE checkpoint; returns the typed result (also written to the output folder).

    Either pass an `EvalConfig`, or the checkpoint path and any `EvalConfig` field as keyword arguments:
    `saehealth.evaluate("checkpoints/demo", n_tokens=50_000, device="cuda")`.
    """
    if config is None:
        if sae_path is None:
            raise ConfigError("evaluate() needs an SAE path (or a config).")
        config = EvalConfig(sae_path=str(sae_path), **options)
    elif options or sae_path is not None:
        raise ConfigError("Pass either a config or keyword options to evaluate(), not both.")
    return Evaluation(config, console).run()


def result_folder(config: EvalConfig) -> Path:
    """Where an evaluation's files go: --out, else reports/<checkpoint name>/ under the current directory."""
    if config.out is not None:
        return Path(config.out)
    name = Path(config.sae_path).expanduser().resolve().name or "sae"
    return Path("reports") / name


class Evaluation:
    """One evaluation run: load, resolve settings, run the pass, assemble and save the result.

    `run()` does it all for one SAE. The steps are separate so that `saehealth compare` can load several
    SAEs itself (`loaded=`), resolve each against one shared model and dataset, score all SAEs at a site
    in one shared pass (`score_batches`), and finish each result with the same code.
    """

    def __init__(self, config: EvalConfig, console=None, loaded=None):
        self.config = config
        self.console = console
        self.loaded = loaded  # a LoadedSAE already loaded by the caller, else loaded by `load()`
        self.timing: dict[str, float] = {}
        self.notes: list[str] = []
        self.not_measured: dict[str, str] = {}
        self.absorption_uncertainty: dict[str, float] = {}
        self.started_at = datetime.now(timezone.utc)
        self._weights: str | None = None  # the SAE's weights fingerprint, computed once

    def run(self) -> EvalResult:
        cached = self.load()
        if cached is not None:
            return cached
        plan = self.resolve()
        t0 = time.perf_counter()
        output = self.score(plan)
        return self.finish(plan, output, replay_s=time.perf_counter() - t0)

    # ------------------------------------------------------------------ resolution
    def load(self) -> EvalResult | None:
        """Load the checkpoint (unless given) and return the saved result when it can be reused, else None."""
        from saehealth.loading import load_checkpoint

        cfg = self.config
        if self.loaded is None:
            t0 = time.perf_counter()
            loaded = load_checkpoint(cfg.sae_path, format=cfg.format, hook=cfg.hook, device=cfg.device, dtype=cfg.dtype)
            if isinstance(loaded, list):
                raise ConfigError(
                    f"{cfg.sae_path} holds {len(loaded)} SAEs: evaluate one hookpoint folder, or use `saehealth compare`."
                )
            self.timing["load_sae_s"] = time.perf_counter() - t0
            self.loaded = loaded
        return self._reusable_result(self._out_folder())

    def resolve(self, model=None, dataset=None) -> Plan:
        """Model, hook, splice site, context, dataset and sequence count for the loaded SAE.

        `model` / `dataset` are used as given when the caller has them loaded already (they must be the ones
        this evaluation's config names)."""
        cfg = self.config
        loaded = self.loaded
        model_name = cfg.model or loaded.model_name
        if model_name is None:
            raise ConfigError(f"{cfg.sae_path} does not say which model it was trained on: pass --model NAME.")
        hook = self._hook_name(loaded)
        if model is None:
            t0 = time.perf_counter()
            kwargs = loaded.model_from_pretrained_kwargs
            model = load_model(model_name, device=cfg.device, dtype=cfg.dtype, from_pretrained_kwargs=kwargs)
            if kwargs and model_name != builtin.BUILTIN_MODEL:
                self.notes.append(f"Model loaded with the checkpoint's model_from_pretrained_kwargs {kwargs}.")
            self.timing["load_model_s"] = time.perf_counter() - t0
        check_hook(model, hook)
        output_hook = loaded.output_hook_name or hook
        check_hook(model, output_hook)
        site = splice_site(model, output_hook, input_hook=hook, head_index=loaded.hook_head_index)
        self._check_width(model, site, loaded.sae)
        context = self.context_length(model, loaded)
        dataset_name, split = self.dataset_choice(model_name, loaded)
        if dataset is None:
            dataset = load_dataset(dataset_name, split)
        n_sequences = self._sequences_wanted(context)
        return Plan(loaded, model_name, hook, model, site, context, dataset_name, split, dataset, n_sequences)

    # ------------------------------------------------------------------ after the pass
    def finish(self, plan: Plan, output: PassOutput, replay_s: float) -> EvalResult:
        """Add geometry and absorption to the pass's metrics, assess, save to the output folder, return."""
        cfg = self.config
        loaded, sae, hook, model = plan.loaded, plan.sae, plan.hook, plan.model
        self.timing["replay_s"] = replay_s
        self.timing["tokens_per_second"] = output.tokens_run / max(replay_s, 1e-9)
        metrics = output.metrics
        details = output.details

        t0 = time.perf_counter()
        if "geometry" in cfg.skip:
            for key in GEOMETRY_KEYS:
                self.not_measured[key] = "skipped with --skip geometry"
        else:
            geometry, max_cos = geometry_metrics(sae.W_dec)
            metrics.update(geometry)
            details["max_decoder_cosine"] = max_cos
        self.timing["geometry_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        metrics.update(self._absorption(model, sae, hook, details))
        self.timing["absorption_s"] = time.perf_counter() - t0

        for key in METRIC_KEYS:
            metrics.setdefault(key, None)
            if metrics[key] is None and key not in self.not_measured:
                self.not_measured[key] = "could not be computed on this data (see notes)"
        result = EvalResult(
            sae=SAEInfo(
                path=str(cfg.sae_path),
                source_library=loaded.source_library,
                architecture=loaded.architecture,
                d_in=int(sae.cfg.d_in),
                d_sae=int(sae.cfg.d_sae),
                hook_name=hook,
                output_hook_name=loaded.output_hook_name,
                hook_head_index=loaded.hook_head_index,
                model_name=loaded.model_name,
                training=_jsonable(loaded.training),
            ),
            eval=EvalSettings(
                model=plan.model_name,
                dataset=plan.dataset_name,
                split=plan.split,
                n_tokens=output.tokens_run,
                tokens_scored=output.tokens_scored,
                context_length=plan.context,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                mask_special_tokens=not cfg.include_special_tokens,
                n_sequences=output.n_sequences,
                absorption_probes=cfg.absorption_probes,
            ),
            metrics={k: _clean_number(v) for k, v in metrics.items()},
            uncertainty={
                k: v for k, v in {**output.uncertainty, **self.absorption_uncertainty}.items() if math.isfinite(v)
            },
            not_measured=self.not_measured,
            provenance=_provenance(cfg, self.started_at),
            timing={k: round(v, 4) for k, v in self.timing.items()},
            notes=[*loaded.notes, *self.notes],
            request=self._request(),
        )
        self._assess(result)
        result.save(self._out_folder(), details)
        return result

    def _out_folder(self) -> Path:
        return result_folder(self.config)

    def _request(self) -> dict:
        """The settings that decide the numbers; a saved result is reused only when they match."""
        cfg = self.config
        keys = (
            "model",
            "hook",
            "layer",
            "dataset",
            "split",
            "n_tokens",
            "num_samples",
            "context_length",
            "seed",
            "include_special_tokens",
            "skip",
            "format",
            "absorption_min_letters",
            "absorption_probes",
        )
        request = {k: list(v) if isinstance(v := getattr(cfg, k), tuple) else v for k in keys}
        if self._weights is None:
            self._weights = weights_fingerprint(self.loaded.sae)
        request["sae_weights"] = self._weights  # a retrained checkpoint at the same path is another SAE
        return request

    def _reusable_result(self, out: Path) -> EvalResult | None:
        """The saved result in `out` when it was computed from these settings and these weights, else None.

        A result computed with the same settings from other weights (the checkpoint was retrained, or the
        result predates weight fingerprints) describes another SAE: it is computed again and replaced. One
        computed with other settings is refused.
        """
        from saehealth.result import RESULT_FILE

        path = out / RESULT_FILE
        if self.config.force or not path.is_file():
            return None
        import json

        saved_request, request = json.loads(path.read_text()).get("request") or {}, self._request()
        if saved_request == request:
            if self.console is not None:
                self.console.print(f"[dim]Reusing {path} (pass --force to re-run).[/]")
            return load_result(path)

        def settings(r: dict) -> dict:
            return {k: v for k, v in r.items() if k != "sae_weights"}

        if settings(saved_request) == settings(request):
            if self.console is not None:
                self.console.print(f"[dim]{path} was computed from other weights: evaluating these.[/]")
            return None
        raise ConfigError(
            f"{path} holds a result computed with other settings: pass --force to replace it, or --out DIR."
        )

    def _hook_name(self, loaded) -> str:
        cfg = self.config
        if cfg.hook:
            return cfg.hook
        if cfg.layer is not None:
            if loaded.hook_name and loaded.hook_name.startswith("blocks."):
                parts = loaded.hook_name.split(".")
                parts[1] = str(cfg.layer)
                return ".".join(parts)
            return f"blocks.{cfg.layer}.hook_resid_post"
        if loaded.hook_name is None:
            raise ConfigError(f"{cfg.sae_path} does not say which hook it reads: pass --hook NAME or --layer N.")
        return loaded.hook_name

    def _check_width(self, model, site, sae) -> None:
        """The SAE's input (and, for transcoders, output) width must match the hooks' widths."""
        probe = torch.zeros(1, 2, dtype=torch.long, device=self.config.device)
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

    def context_length(self, model, loaded) -> int:
        """Tokens per sequence: --context-length, else the checkpoint's, capped at the model's context."""
        context = self.config.context_length or loaded.context_size or model.cfg.n_ctx
        if context > model.cfg.n_ctx:
            if self.config.context_length:
                raise ConfigError(
                    f"--context-length {context} is longer than the model's context ({model.cfg.n_ctx}): lower it."
                )
            context = model.cfg.n_ctx
        if context < 2:
            raise ConfigError("The context length must be at least 2 tokens to score next-token predictions.")
        return context

    def dataset_choice(self, model_name: str, loaded) -> tuple[str, str]:
        """(dataset, split): the options', else the built-in corpus for the built-in model or the checkpoint's."""
        cfg = self.config
        name = cfg.dataset
        if name is None:
            name = builtin.BUILTIN_DATASET if model_name == builtin.BUILTIN_MODEL else loaded.dataset_path
        if name is None:
            raise ConfigError(f"{cfg.sae_path} does not record its training dataset: pass --dataset NAME.")
        if cfg.split is not None:
            return name, cfg.split
        if name == builtin.BUILTIN_DATASET:
            return name, "validation"  # held out from training
        for split in ("validation", "test"):
            try:
                load_dataset(name, split)
                return name, split
            except DataError:
                continue
        self.notes.append(f"{name} has no validation or test split: evaluated on 'train', which may overlap training.")
        return name, "train"

    def _sequences_wanted(self, context: int) -> int:
        cfg = self.config
        if cfg.num_samples is not None:
            return cfg.num_samples
        tokens = cfg.n_tokens if cfg.n_tokens is not None else DEFAULT_MAX_TOKENS
        return max(1, math.ceil(tokens / context))

    # ------------------------------------------------------------------ the pass
    def score(self, plan: Plan) -> PassOutput:
        """The pass over the evaluation tokens for this SAE alone (`check_pass` applied)."""
        cfg = self.config
        batches = sequence_batches(
            plan.dataset, plan.model.tokenizer, plan.context, plan.n_sequences, cfg.batch_size, cfg.seed
        )
        with _progress(self.console, plan.n_sequences * plan.context) as advance:
            (output,) = score_batches(
                plan.model, plan.site, [plan.sae], batches, cfg.include_special_tokens, cfg.device, advance
            )
        self.check_pass(plan, output)
        return output

    def check_pass(self, plan: Plan, output: PassOutput) -> None:
        """Refuse a pass that scored nothing; note when the dataset held fewer tokens than asked for."""
        cfg = self.config
        n_sequences, context = plan.n_sequences, plan.context
        if output.n_sequences == 0:
            raise DataError(
                f"The dataset yields no sequence of {context} tokens: use a larger dataset or a smaller --context-length."
            )
        if output.n_sequences < n_sequences and (cfg.n_tokens is not None or cfg.num_samples is not None):
            self.notes.append(
                f"Asked for {n_sequences * context:,} tokens but the dataset holds {output.tokens_run:,} "
                f"({output.n_sequences} sequences of {context}): evaluated all of it."
            )
        if output.tokens_scored == 0:
            raise DataError(
                "Every position was masked as a special token: check the dataset or pass --include-special-tokens."
            )

    # ------------------------------------------------------------------ optional parts
    def _absorption(self, model, sae, hook: str, details: dict) -> dict:
        from saehealth.absorption import AbsorptionSettings, absorption_applicable, measure_absorption

        keys = ABSORPTION_KEYS
        reason = "skipped with --skip absorption" if "absorption" in self.config.skip else absorption_applicable(hook)
        if reason is None:
            result = measure_absorption(
                model,
                sae,
                hook,
                seed=self.config.seed,
                cache_dir=_cache_dir(),
                device=self.config.device,
                settings=AbsorptionSettings(
                    schedule=self.config.absorption_probes, min_letters=self.config.absorption_min_letters
                ),
            )
            for name, array in result.per_letter.items():
                details[f"absorption_{name}"] = torch.as_tensor(array)
            self.notes.extend(result.notes)
            self.absorption_uncertainty = result.uncertainty
            if result.not_measured_reason is None:
                return result.metrics
            reason = result.not_measured_reason
            measured = {k: v for k, v in result.metrics.items() if v is not None}
            for key in keys:
                if key not in measured:
                    self.not_measured[key] = reason
            return {**dict.fromkeys(keys), **measured}
        for key in keys:
            self.not_measured[key] = reason
        return dict.fromkeys(keys)

    def _assess(self, result: EvalResult) -> None:
        from saehealth.thresholds import assess, load_thresholds

        result.verdicts = assess(
            result.metrics, result.not_measured, load_thresholds(self.config.thresholds), d_sae=result.sae.d_sae
        )


@torch.no_grad()
def score_batches(
    model, site, saes, batches, include_special_tokens: bool = False, device: str = "cpu", advance=None
) -> list[PassOutput]:
    """The one pass over token batches for one or more SAEs at the same site.

    Each batch is replayed once (shared prefix, clean and zero-ablated continuations) and every SAE's
    spliced continuation feeds its own accumulators. Returns one `PassOutput` per SAE, in order.
    """
    saes = list(saes)
    scorers = [_Scorer(sae) for sae in saes]
    cache, unembedding = ReplayCache(), readout(model)
    sequences = tokens_run = 0
    try:
        for tokens in batches:
            tokens = tokens.to(device)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            out = replay_batch(model, site, [(s.encode, s.decode) for s in scorers], tokens, mask, cache)
            shared, own = downstream_totals(unembedding, out.clean, out.zero, [o.final for o in out.saes], tokens, mask)
            for scorer, sae_out, sae_totals in zip(scorers, out.saes, own, strict=True):
                scorer.update(sae_out, {**shared, **sae_totals}, mask)
            sequences += tokens.shape[0]
            tokens_run += tokens.numel()
            if advance is not None:
                advance(tokens.numel())
    finally:
        for scorer in scorers:
            scorer.restore()
    return [scorer.result(sequences, tokens_run) for scorer in scorers]


class _Scorer:
    """One SAE's accumulators during the pass."""

    def __init__(self, sae):
        self.reconstruction = ReconstructionAccumulator(int(getattr(sae.cfg, "d_out", sae.cfg.d_in)))
        self.downstream = DownstreamAccumulator()
        self.sparsity = SparsityAccumulator(int(sae.cfg.d_sae))
        self.totals = SequenceTotals(SEQUENCE_QUANTITIES)
        self.encode, self.decode, self.restore = _sae_functions(sae)

    def update(self, out, downstream: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """Add a batch: this SAE's outputs, its downstream per-sequence totals and the mask."""
        self.downstream.update(downstream)
        per_sequence = dict(downstream)
        per_sequence.update(self.reconstruction.update(out.x, out.x_hat, mask))
        per_sequence.update(self.sparsity.update(out.feature_acts, mask))
        self.totals.update(per_sequence)

    def result(self, sequences: int, tokens_run: int) -> PassOutput:
        metrics: dict = {}
        metrics.update(self.reconstruction.result())
        metrics.update(self.downstream.result())
        metrics.update(self.sparsity.result())
        uncertainty = {key: self.totals.ratio(num, den)[1] for key, (num, den) in RATIO_METRICS.items()}
        details = {
            "feature_density": self.sparsity.density(),
            "firing_counts": self.sparsity.firing_counts,
            "l0_histogram": self.sparsity.l0_histogram,
        }
        return PassOutput(metrics, uncertainty, details, sequences, tokens_run, self.sparsity.tokens)


class _StopForward(Exception):
    """Raised from a hook to stop a probe forward pass once the activation's width is known."""


def _sae_functions(sae):
    """encode/decode closures over (batch, pos, d_in) in the model's dtype, and a function to undo changes."""
    reshaping = getattr(sae, "hook_z_reshaping_mode", False)
    if reshaping:
        # We flatten heads ourselves (and need the flat x for the metrics), as SAELens' evals do.
        sae.turn_off_forward_pass_hook_z_reshaping()
    sae.eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(sae.dtype))

    def decode(feature_acts: torch.Tensor) -> torch.Tensor:
        return sae.decode(feature_acts)

    def restore() -> None:
        if reshaping:
            sae.turn_on_forward_pass_hook_z_reshaping()

    return encode, decode, restore


class _progress:
    """A rich progress bar in tokens with tokens/s and ETA; silent without a console."""

    def __init__(self, console, total_tokens: int):
        self.console = console
        self.total = total_tokens

    def __enter__(self):
        if self.console is None:
            return lambda n: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]replaying[/]"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("replay", total=self.total, rate="")
        self.started = time.perf_counter()

        def advance(n: int) -> None:
            self.progress.advance(self.task, n)
            done = self.progress.tasks[0].completed
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, rate=f"{rate:,.0f} tok/s")

        return advance

    def __exit__(self, *exc):
        if self.console is not None:
            self.progress.__exit__(*exc)
        return False


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("SAEHEALTH_CACHE", Path.home() / ".cache" / "saehealth"))


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _provenance(cfg: EvalConfig, started_at: datetime) -> Provenance:
    return Provenance(
        saehealth=_package_version("saehealth"),
        sae_lens=_package_version("sae-lens"),
        transformer_lens=_package_version("transformer-lens"),
        torch=torch.__version__,
        device=cfg.device,
        dtype=cfg.dtype,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_s=round((datetime.now(timezone.utc) - started_at).total_seconds(), 3),
    )


def _clean_number(value):
    """JSON-safe metric: NaN/Inf become None (a metric that is not a number was not measured)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(obj):
    """Best-effort conversion of checkpoint training facts to JSON-safe values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)
