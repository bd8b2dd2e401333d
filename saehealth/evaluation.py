"""`saehealth eval` of one SAE: load it, plan, run the pass, finish and save the typed result.

The orchestration only: what to run is resolved in `planning.py`, the pass is `scoring.py` (over `replay.py` and
`metrics/`), geometry, absorption and verdicts are `finishing.py`. Several SAEs (`saehealth compare`, an eval of a
run folder) go through `compare.py`, which drives the same steps for every SAE over one shared pass.

Under torchrun every rank runs these steps on its own shard of the sequences; rank 0 alone reuses or writes
results, and the other ranks return None.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from saehealth import builtin, distributed, planning
from saehealth.config import EvalConfig
from saehealth.data import load_dataset
from saehealth.errors import ConfigError, DataError
from saehealth.fingerprint import weights_fingerprint
from saehealth.finishing import finish_result, logit_lens_of
from saehealth.latents.store import write_latents
from saehealth.models import load_model
from saehealth.output import check_output_folder
from saehealth.planning import Plan
from saehealth.progress import progress
from saehealth.result import EvalResult
from saehealth.result_folder import save_result_folder
from saehealth.result_reuse import request_of, reusable_result
from saehealth.sae_scorer import PassOutput
from saehealth.scoring import score_batches


def evaluate(
    sae_path: str | Path | None = None,
    *,
    sae=None,
    model=None,
    config: EvalConfig | None = None,
    console=None,
    **options,
) -> EvalResult | None:
    """Evaluate one SAE; returns the typed result.

    A checkpoint: pass an `EvalConfig`, or the checkpoint path and any `EvalConfig` field as keyword arguments:
    `saehealth.evaluate("checkpoints/demo", n_tokens=50_000, device="cuda")`; the result is also written to the
    output folder. An SAE in memory: `saehealth.evaluate(sae=obj, model=model, hook=..., ...)`, with `obj` a
    sae_lens SAE or any module with encode(x)/decode(latents) and `model` a HookedTransformer or a name; nothing
    is written unless `out=` is given (in_memory.py). Under torchrun, ranks other than 0 return None.
    """
    from saehealth.loading.objects import is_sae_object

    if sae is not None or is_sae_object(sae_path):
        if config is not None:
            raise ConfigError("Pass keyword options with sae=, not a config.")
        return evaluate_object(sae if sae is not None else sae_path, model=model, console=console, **options)
    if model is not None:
        if not isinstance(model, str):
            raise ConfigError("A loaded model is evaluated with an SAE object: evaluate(sae=obj, model=model).")
        options["model"] = model
    if config is None:
        if sae_path is None:
            raise ConfigError("evaluate() needs an SAE path (or a config).")
        config = EvalConfig(sae_path=str(sae_path), **options)
    elif options or sae_path is not None:
        raise ConfigError("Pass either a config or keyword options to evaluate(), not both.")
    return Evaluation(config, console).run()


def evaluate_object(sae, model=None, console=None, name: str | None = None, **options) -> EvalResult | None:
    """The `EvalResult` of an in-memory SAE on `model` (in_memory.py); written only with `out=`."""
    from saehealth.in_memory import keep_details, prepare_object

    if options.get("saebench_out") is not None and not hasattr(getattr(sae, "cfg", None), "to_dict"):
        raise ConfigError("saebench_out= writes a SAELens config: it needs a sae_lens SAE, not a custom module.")
    loaded, model, config, extras = prepare_object(sae, model, name=name, **options)
    run = Evaluation(config, console, loaded=loaded, model=model, write=config.out is not None)
    run.request_extra = extras
    was_training = loaded.sae.training
    try:
        result = run.run()
        if result is not None and run.details is not None:
            keep_details(result, run.details)
        return result
    finally:
        loaded.sae.train(was_training)  # scoring puts the SAE in eval mode: a training loop's SAE goes back


def result_folder(config: EvalConfig) -> Path:
    """Where an evaluation's files go: --out, else reports/<checkpoint name>/ under the current directory."""
    if config.out is not None:
        return Path(config.out)
    name = Path(config.sae_path).expanduser().resolve().name or "sae"
    return Path("reports") / name


class Evaluation:
    """One SAE's evaluation: load, reuse or plan, pass, finish and save.

    `run()` does it all for one SAE. The steps are separate so that `saehealth compare` can load several SAEs
    itself (`loaded=`), plan each against one shared model and dataset, score them all in one shared pass and
    finish each result with the same code.
    """

    def __init__(self, config: EvalConfig, console=None, loaded=None, model=None, write: bool = True):
        self.config = config
        self.console = console
        self.loaded = loaded  # a LoadedSAE already loaded by the caller, else loaded by `load()`
        self.model = model  # a HookedTransformer the caller holds (an SAE object's evaluation), else loaded
        self.write = write  # False: no result folder is read or written (an in-memory SAE without out=)
        self.request_extra: dict = {}  # more that decides the numbers (an in-memory model's weights fingerprint)
        self.details: dict | None = None  # the per-latent details, once finished (in-memory results render them)
        self.timing: dict[str, float] = {}
        self.notes: list[str] = []
        self.not_measured: dict[str, str] = {}
        self.dtype_source = "--dtype"  # why the evaluation runs in config.dtype (`_choose_dtype`)
        self.started_at = datetime.now(timezone.utc)
        self._weights: str | None = None  # the SAE's weights fingerprint, computed once

    def run(self) -> EvalResult | None:
        distributed.setup(self.config.device)
        with distributed.step():
            result = self.load()
        if not distributed.broadcast(result is not None):
            with distributed.step():
                plan = self.plan()
            t0 = time.perf_counter()
            output = self.score(plan)
            if output is None:  # another rank than 0: its share is merged there
                return None
            self.check_pass(plan, output)
            result = self.finish(plan, output, replay_s=time.perf_counter() - t0)
        if result is not None and self.config.saebench_out is not None:
            from saehealth.saebench.export import export_result

            export_result(result, self.loaded.sae, self.config.saebench_out, result_folder(self.config), self.console)
        return result

    def load(self) -> EvalResult | None:
        """Load the checkpoint (unless given) and return the saved result when it can be reused, else None.

        Under torchrun only rank 0 looks at saved results (ranks on other nodes may not see its disk)."""
        from saehealth.loading import load_checkpoint

        cfg = self.config
        first = distributed.ranks().first  # only rank 0 writes, so only its disk matters
        first = first and self.write  # nothing to reuse or refuse when nothing is written
        if first:  # before any work: refuse a folder that is not ours
            folder = check_output_folder(result_folder(cfg), "result")
            if cfg.saebench_out is not None:
                from saehealth.saebench.export import check_saebench_out

                check_saebench_out(cfg.saebench_out, [folder.name], folder)
        if self.loaded is None:
            t0 = time.perf_counter()
            loaded = load_checkpoint(
                cfg.sae_path,
                format=cfg.format,
                hook=cfg.hook,
                device=cfg.device,
                dtype=cfg.dtype or "float32",
                route=cfg.route,
            )
            if isinstance(loaded, list):
                raise ConfigError(
                    f"{cfg.sae_path} holds {len(loaded)} SAEs: evaluate them with `saehealth eval` on the command "
                    "line, `saehealth.compare.compare` from Python, or pick one with --select."
                )
            self.timing["load_sae_s"] = time.perf_counter() - t0
            self.loaded = loaded
        self._choose_dtype()
        if self.loaded.route is not None:
            from saehealth.routed.scoring import check_routed_options

            check_routed_options(cfg)
        if not first:
            return None
        return reusable_result(result_folder(cfg), self._request(), self.config.force, self.console)

    def _choose_dtype(self) -> None:
        """Settle the evaluation's dtype (--dtype, else the SAE's training dtype, else float32) and put the SAE in
        it; the config names it from here on, `dtype_source` says why."""
        dtype, self.dtype_source = planning.choose_dtype(self.config, self.loaded)
        if self.config.dtype != dtype:
            self.config = replace(self.config, dtype=dtype)
        sae = self.loaded.sae
        if str(getattr(sae.cfg, "dtype", dtype)).removeprefix("torch.") != dtype:
            from saehealth.loading.files import DTYPES

            sae.to(dtype=DTYPES[dtype])

    def plan(self, model=None, dataset=None) -> Plan:
        """Model, hook, splice site, context, dataset and sequence count for the loaded SAE.

        `model` / `dataset` are used as given when the caller has them loaded already (they must be the ones
        this evaluation's config names)."""
        if self.config.activations is not None:
            return self._plan_cache(model)
        cfg, loaded = self.config, self.loaded
        model_name = planning.model_name(cfg, loaded)
        model = model if model is not None else self.model
        if model is None:
            t0 = time.perf_counter()
            kwargs = loaded.model_from_pretrained_kwargs
            model = load_model(
                model_name,
                device=cfg.device,
                dtype=cfg.dtype,
                from_pretrained_kwargs=kwargs,
                context=cfg.context_length or loaded.context_size,
            )
            if kwargs and model_name != builtin.BUILTIN_MODEL:
                self.notes.append(f"Model loaded with the checkpoint's model_from_pretrained_kwargs {kwargs}.")
            self.timing["load_model_s"] = time.perf_counter() - t0
        if (note := planning.dtype_note(cfg, loaded, self.dtype_source)) is not None:
            self.notes.append(note)
        route = None
        if loaded.route is not None:  # a routed SAE reads several hooks (saehealth/routed/)
            from saehealth.routed.scoring import routed_plan_site

            route, hook, site = routed_plan_site(loaded, model)
        else:
            hook, site = planning.site_of(cfg, loaded, model)
        context = planning.context_length(cfg, model, loaded, self.notes)
        if (note := planning.context_note(context, loaded)) is not None:
            self.notes.append(note)
        dataset_name, split = planning.dataset_choice(cfg, model_name, loaded, self.notes)
        if dataset is None:
            dataset = load_dataset(dataset_name, split)
        n_sequences = planning.sequences_wanted(cfg, context)
        planning.check_ranks(n_sequences)
        bos = planning.prepend_bos_of(loaded, model)
        plan = Plan(
            loaded, model_name, hook, model, site, context, dataset_name, split, dataset, n_sequences, prepend_bos=bos
        )
        plan.route = route
        return plan

    def _plan_cache(self, model=None) -> Plan:
        """The plan of an evaluation from an activation cache (activations/resolve.py does the checks)."""
        from saehealth.activations.resolve import resolve_cache

        cfg, loaded = self.config, self.loaded
        named = cfg.hook or cfg.layer is not None or loaded.hook_name
        cache = resolve_cache(cfg, loaded, planning.hook_name(cfg, loaded) if named else None, model=model)
        self.notes += cache.notes
        self.not_measured.update(cache.not_measured)
        info = cache.info
        planning.check_ranks(cache.n_sequences)
        return Plan(
            loaded=loaded,
            model_name=cache.model_name,
            hook=cache.hook,
            model=cache.model,
            site=None,
            context=cache.context,
            dataset_name=str(info.path),
            split=info.description,
            dataset=cache.data,
            n_sequences=cache.n_sequences,
            activations=info.layout,
            special_tokens_known=cache.special_tokens_known,
        )

    def score(self, plan: Plan) -> PassOutput | None:
        """The pass over the evaluation tokens for this SAE alone (None on ranks other than 0)."""
        if plan.activations is not None:
            from saehealth.activations.scoring import score_cache

            (output,) = score_cache([plan], self.config, self.console) or (None,)
            return output
        batches = planning.token_batches(plan, self.config)
        if plan.route is not None:
            from saehealth.routed.scoring import score_routed_plan

            with progress(self.console, planning.share_of_tokens(plan)) as advance:
                return score_routed_plan(plan, batches, self.config, advance, planning.reference_sequence(plan, self.config),
                                         self.notes, self.not_measured)  # fmt: skip
        with progress(self.console, planning.share_of_tokens(plan)) as advance:
            outputs = score_batches(
                plan.model,
                [(plan.site, plan.sae)],
                batches,
                self.config.include_special_tokens,
                self.config.device,
                advance,
                planning.reference_sequence(plan, self.config),
                self.config.examples,
                pathological="pathological" not in self.config.skip,
            )
        return None if outputs is None else outputs[0]

    def check_pass(self, plan: Plan, output: PassOutput) -> None:
        """Refuse a pass that scored nothing; note when the dataset held fewer tokens than asked for."""
        cfg = self.config
        n_sequences, context = plan.n_sequences, plan.context
        if output.n_sequences == 0:
            raise DataError(
                f"The dataset yields no sequence of {context} tokens: use a larger dataset or a smaller --context-length."
            )
        world = distributed.ranks().world_size
        if output.n_sequences < world:
            raise DataError(
                f"The dataset holds {output.n_sequences} sequence(s) of {context} tokens, fewer than the "
                f"{world} torchrun processes: run with at most {output.n_sequences}."
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

    def finish(self, plan: Plan, output: PassOutput, replay_s: float) -> EvalResult:
        """Add geometry and absorption to the pass's metrics, assess, save to the output folder, return."""
        self.timing["replay_s"] = replay_s
        self.timing["tokens_per_second"] = output.tokens_run / max(replay_s, 1e-9)
        result, details = finish_result(
            self.config,
            plan,
            output,
            timing=self.timing,
            notes=self.notes,
            not_measured=self.not_measured,
            started_at=self.started_at,
            request=self._request(),
        )
        t0 = time.perf_counter()
        lens, lens_reason = logit_lens_of(plan) if output.latents is not None else (None, None)
        self.timing["logit_lens_s"] = time.perf_counter() - t0

        def latents(folder: Path) -> None:
            write_latents(folder, output.latents, lens, lens_reason, result.request)

        if self.write:  # result, details, latents, report.md with plots, report.html: all or nothing
            save_result_folder(
                result_folder(self.config), result, details, latents=latents, html_latents=self.config.html_latents
            )
        self.details = details
        return result

    def _request(self) -> dict:
        """The settings that decide the numbers; a saved result is reused only when they match."""
        if self._weights is None:
            self._weights = weights_fingerprint(self.loaded.sae)
        return request_of(self.config, self._weights, self.request_extra)
