"""`saehealth compare`, and `saehealth eval` of a run folder: several SAEs of one model on identical tokens.

Settings are resolved once for all SAEs (`shared_settings.py`): the model (from --model or the SAEs, which must
agree), the context length (the SAEs must agree unless --context-length is given), the dataset and split, the
token count and seed. Each SAE then goes through the single-SAE steps (`evaluation.Evaluation`: reuse, plan,
finish) with those settings written into its config, so its result is what `saehealth eval` gives for it with the
same options. The pass is shared by all of them, whatever their hooks: one clean forward per batch, one zero
ablation per site, each SAE spliced in at its own hook (`scoring.score_batches`).

Each SAE keeps its own result folder, `<out>/<name>/` (result.json, details, report.md), reused unless --force as
in eval. The comparison itself is `<out>/comparison.{json,md}` with frontier plots, or for a run folder
`<out>/run.json` and `<out>/run_report.md` with metrics plotted against layer (report/compare_report.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from saehealth import distributed
from saehealth.compare_output import comparison_settings, write_comparison
from saehealth.comparison import (
    VIEWS,
    ComparedSAE,
    Comparison,
    by_layer,
    by_training_tokens,
    is_trajectory,
)
from saehealth.comparison_differences import paired_differences, reference_index
from saehealth.config import EvalConfig
from saehealth.errors import ConfigError
from saehealth.evaluation import Evaluation, result_folder
from saehealth.member_names import checkpoint_paths, member_names, unique_names
from saehealth.output import check_output_folder
from saehealth.planning import reference_sequence, share_of_tokens, token_batches
from saehealth.progress import progress
from saehealth.replace_all import check_one_per_hook, replace_all_metrics
from saehealth.result import EvalResult
from saehealth.routed.scoring import routed_output
from saehealth.routed.spec import check_not_routed, split_hook_option
from saehealth.scoring import score_batches
from saehealth.shared_settings import shared_context, shared_dataset, shared_model, shared_model_kwargs

DEFAULT_OUT = Path("reports") / "comparison"


@dataclass(frozen=True)
class CompareConfig:
    """What `saehealth compare` evaluates (paths, sweep globs, `select` over the members of run folders), where
    it writes and how it is shown (`view`); `evaluation` holds the options every SAE is evaluated with, validated
    by EvalConfig (its sae_path and out are set per SAE)."""

    paths: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()  # globs; every match is added after the paths
    out: Path | None = None
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(sae_path=""))
    select: str | None = None
    view: str = "comparison"
    reference: str | None = None  # the SAE the others' differences are taken against (default: the first)
    replace_all: bool = False  # also score the model with every SAE spliced in at once (replace_all.py)

    def __post_init__(self) -> None:
        if not self.paths and not self.sweep:
            raise ConfigError(
                "Nothing to compare: give checkpoint paths, or --sweep 'GLOB' (e.g. 'checkpoints/sweep_*')."
            )
        if self.view not in VIEWS:
            raise ConfigError(f"Unknown view {self.view!r}: choose from {', '.join(VIEWS)}.")

    @classmethod
    def of(cls, paths=(), sweep=(), out: Path | None = None, select: str | None = None, **options) -> CompareConfig:
        """From checkpoint paths, `reference`, `replace_all` and any EvalConfig option as a keyword (n_tokens=, ...)."""
        paths = [paths] if isinstance(paths, (str, Path)) else paths
        own = {key: options.pop(key) for key in ("reference", "replace_all") if key in options}
        return cls(tuple(str(p) for p in paths), tuple(sweep), out, EvalConfig(sae_path="", **options), select, **own)

    @property
    def out_folder(self) -> Path:
        return Path(self.out) if self.out is not None else DEFAULT_OUT


def compare(paths=(), *, model=None, config: CompareConfig | None = None, console=None, **options) -> Comparison | None:
    """Evaluate several SAEs on identical tokens and write the comparison; returns it.

    Either pass a `CompareConfig`, or the paths, `sweep`, `out`, `select` and any `EvalConfig` option as keyword
    arguments: `saehealth.compare.compare(["a", "b"], sweep=("checkpoints/sweep_*",), n_tokens=20_000)`.
    Writes `<out>/<name>/` per SAE (result.json, details, report.md) and `<out>/comparison.{json,md}` with
    frontier plots. Under torchrun, ranks other than 0 return None.

    SAEs in memory: `paths` may hold SAE objects beside paths (a dict names them: {"a": sae, "b": "ckpt/"}) and
    `model` a loaded HookedTransformer; then nothing is written unless `out=` is given (in_memory.py).
    """
    from saehealth.loading.objects import is_sae_object

    items = list(paths.values()) if isinstance(paths, dict) else [paths] if isinstance(paths, (str, Path)) else paths
    if config is None and (any(is_sae_object(item) for item in items) or not isinstance(model, (str, type(None)))):
        from saehealth.in_memory import object_members

        model, members, options, extras = object_members(paths, model, options)
        config = CompareConfig.of([path for path, _, _ in members], **options)
        return _Comparer(config, console, members, model=model, write=config.out is not None, extras=extras).run()
    if model is not None:
        options["model"] = model
    if config is None:
        config = CompareConfig.of(paths, **options)
    elif options or paths:
        raise ConfigError("Pass either a config or paths and keyword options to compare(), not both.")
    return _Comparer(config, console).run()


def evaluate_path(
    config: EvalConfig, select: str | None = None, console=None, replace_all: bool = False
) -> EvalResult | Comparison | None:
    """`saehealth eval`: one SAE, or every SAE of a run folder (sparsify hookpoints, a SAELens multi-SAE run,
    dictionary_learning trainers, a folder of SAELens SAEs) in one pass with a run report; `select` is a glob over
    the folder's members. Under torchrun, ranks other than 0 return None."""
    from saehealth.loading import load_checkpoint

    distributed.setup(config.device)
    with distributed.step():
        t0 = time.perf_counter()
        loaded = load_checkpoint(
            config.sae_path, format=config.format, hook=config.hook, device=config.device,
            dtype=config.dtype or "float32", select=select, route=config.route,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    if isinstance(loaded, list):
        names = member_names([item.path or config.sae_path for item in loaded])
        view = "trajectory" if is_trajectory(names, [item.hook_name for item in loaded]) else "run"
        run = CompareConfig(
            (config.sae_path,), (), result_folder(config), config, select, view, replace_all=replace_all
        )
        members = [(item.path or config.sae_path, item, seconds / len(loaded)) for item in loaded]
        return _Comparer(run, console, members).run()
    if select is not None and loaded.path:  # one member picked out of a run folder: evaluated as itself
        config = replace(config, sae_path=loaded.path)
    evaluation = Evaluation(config, console, loaded=loaded)
    evaluation.timing["load_sae_s"] = seconds
    return evaluation.run()


class _Comparer:
    """One comparison run: load every SAE, resolve the shared settings, one shared pass, finish, write."""

    def __init__(
        self, config: CompareConfig, console=None, members: list | None = None, model=None, write=True, extras=None
    ):
        if config.evaluation.dtype is None:  # several SAEs share one model: float32 unless --dtype says otherwise
            config = replace(config, evaluation=replace(config.evaluation, dtype="float32"))
        self.config = config
        self.console = console
        self.members = members  # (sae_path, LoadedSAE, load seconds) already loaded by the caller
        self.model = model  # the caller's HookedTransformer (SAEs in memory), else loaded here
        self.write = write  # False: no folder is read or written (SAEs in memory without out=)
        self.extras = extras or {}  # more of every request: the in-memory model's weights fingerprint
        self.notes: list[str] = []
        self.timing: dict[str, float] = {}
        self.paired, self.scored = None, []  # the scored SAEs' per-sequence totals side by side, which SAEs those are
        self.replace_all: dict | None = None  # every SAE spliced in at once (--replace-all)

    def run(self) -> Comparison | None:
        from saehealth.data import load_dataset
        from saehealth.models import load_model

        started = time.perf_counter()
        cfg, options = self.config, self.config.evaluation
        distributed.setup(options.device)
        if distributed.ranks().first and self.write:  # only rank 0 writes: refuse a folder that is not ours
            folder = check_output_folder(cfg.out_folder, "comparison")
            if options.saebench_out is not None:  # each SAE's files are checked with its result folder
                from saehealth.saebench.export import check_saebench_out

                check_saebench_out(options.saebench_out, [], folder)
        with distributed.step():
            members = self.members if self.members is not None else self._load_all(cfg)
            paths = [path for path, _, _ in members]
            names = member_names(paths) if cfg.view in ("run", "trajectory") else unique_names(paths)
            named = [(name, loaded) for name, (_, loaded, _) in zip(names, members, strict=True)]
            reference = reference_index(names, cfg.reference)  # an unknown name stops before any work
            if cfg.replace_all:
                check_one_per_hook(named)
                check_not_routed(named)
            model_name = shared_model(options, named)
            cache = options.activations is not None  # an activation cache: the model only when --model asks for it
            t0 = time.perf_counter()
            model = self.model
            if model is None and (not cache or options.model):
                kwargs = shared_model_kwargs(named)
                needed = max([options.context_length or m[1].context_size or 0 for m in members]) or None
                model = load_model(
                    model_name,
                    device=options.device,
                    dtype=options.dtype,
                    from_pretrained_kwargs=kwargs,
                    context=needed,
                )
            self.timing["load_model_s"] = time.perf_counter() - t0
            if cache:
                from saehealth.activations.resolve import cache_context

                template = options
                context, dataset_name, split, dataset_notes = (
                    cache_context(options, [m[1] for m in members]),
                    None,
                    None,
                    [],
                )
            else:
                template = replace(options, model=model_name)
                context = shared_context(template, model, named)
                dataset_name, split, dataset_notes = shared_dataset(template, model_name, named)
            self.notes += dataset_notes
            shared = replace(template, context_length=context, dataset=dataset_name, split=split)
            evaluations = [
                self._evaluation(shared, name, path, loaded, seconds, dataset_notes)
                for name, (path, loaded, seconds) in zip(names, members, strict=True)
            ]
            results: list[EvalResult | None] = [evaluation.load() for evaluation in evaluations]
        pending = distributed.broadcast([i for i, result in enumerate(results) if result is None])
        if cfg.replace_all and len(pending) < len(results):
            self.notes.append("--replace-all runs with the pass, and some results were reused: pass --force.")
        reused = [i not in pending for i in range(len(results))]
        if any(reused) and self.console is not None:
            names_reused = ", ".join(n for n, r in zip(names, reused, strict=True) if r)
            self.console.print(f"[dim]Reusing saved results of {names_reused} (pass --force to re-run).[/]")
        if pending:
            with distributed.step():
                dataset = load_dataset(dataset_name, split) if not cache else None
                plans = {i: evaluations[i].plan(model=model, dataset=dataset) for i in pending}
            scored = self._score_all(evaluations, plans)
            if scored is None:  # another rank than 0: its share is merged there
                return None
            for i, result in scored.items():
                results[i] = result
        elif not distributed.ranks().first:
            return None

        entries = []
        for name, evaluation, result, was_reused in zip(names, evaluations, results, reused, strict=True):
            if was_reused and options.thresholds is not None:
                from saehealth.verdicts import result_verdicts

                result.verdicts = result_verdicts(result, options.thresholds)
            entries.append(ComparedSAE(name, evaluation.config.sae_path, result, cfg.out_folder / name, was_reused))
        if options.saebench_out is not None:
            from saehealth.saebench.export import export_result

            for entry, evaluation in zip(entries, evaluations, strict=True):
                export_result(entry.result, evaluation.loaded.sae, options.saebench_out, entry.folder, self.console)
        differences = None
        if cfg.view == "comparison" and len(entries) > 1:  # before by_layer: in the order of `names`
            scored = [self.scored.index(i) if i in self.scored else None for i in range(len(entries))]
            routed = [e.result.routing is not None for e in entries]
            differences = paired_differences(
                names, [e.result.metrics for e in entries], scored, self.paired, reference, routed
            )
        if cfg.view == "run":
            entries = by_layer(entries)
        elif cfg.view == "trajectory":
            entries = by_training_tokens(entries)
        comparison = Comparison(
            entries, comparison_settings(entries, options), cfg.out_folder, self.notes, self.timing, view=cfg.view
        )
        comparison.differences = differences
        comparison.replace_all = self.replace_all
        if not comparison.identical_tokens:
            comparison.notes.append(
                "Not every result was computed on the same tokens (a saved result from another run was reused): "
                "pass --force to re-run them all."
            )
        if self.write:
            write_comparison(comparison, options, started)
        return comparison

    def _evaluation(self, shared: EvalConfig, name: str, path: str, loaded, seconds: float, notes) -> Evaluation:
        config = replace(shared, sae_path=path, out=self.config.out_folder / name)
        if loaded.route is None:  # --route and a routed hook list are the routed SAEs' (as their eval would have)
            config = replace(config, route=None, hook=split_hook_option(config.hook)[0])
        evaluation = Evaluation(config, loaded=loaded, model=self.model, write=self.write)
        evaluation.request_extra = self.extras
        evaluation.timing["load_sae_s"] = seconds
        evaluation.notes += notes
        if loaded.model_name is None:
            evaluation.notes.append(f"The checkpoint does not record its model: evaluated on {shared.model}.")
        return evaluation

    def _load_all(self, cfg: CompareConfig) -> list[tuple[str, object, float]]:
        """(sae_path, LoadedSAE, load seconds) per SAE; a folder of several SAEs gives one entry per member."""
        from saehealth.loading import load_checkpoint

        options = cfg.evaluation
        members: list[tuple[str, object, float]] = []
        seen: set[Path] = set()
        t_all = time.perf_counter()
        hook, routed_hooks = split_hook_option(options.hook)
        for path in checkpoint_paths(cfg.paths, cfg.sweep):
            t0 = time.perf_counter()
            loaded = load_checkpoint(
                path, hook=hook, device=options.device, dtype=options.dtype, select=cfg.select, route=options.route,
                routed_hooks=routed_hooks,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            items = loaded if isinstance(loaded, list) else [loaded]
            for item in items:
                # A member of a multi-SAE folder is evaluated (and re-evaluated by eval) through its own path.
                member_path = item.path if isinstance(loaded, list) and item.path else str(path)
                key = Path(member_path).expanduser().resolve()
                if key in seen:
                    continue
                seen.add(key)
                members.append((member_path, item, seconds / len(items)))
        self.timing["load_saes_s"] = time.perf_counter() - t_all
        return members

    def _score_all(self, evaluations: list[Evaluation], plans: dict) -> dict[int, EvalResult] | None:
        """One pass over the shared token batches for every pending SAE, whatever its hook; finish every result."""
        options = self.config.evaluation
        pending = list(plans)
        some = plans[pending[0]]
        n_sites = len({plans[i].route.label if plans[i].route else plans[i].site or plans[i].hook for i in pending})
        if self.console is not None:
            self.console.print(
                f"Scoring {len(pending)} SAE{'s' if len(pending) > 1 else ''} at {n_sites} "
                f"hook{'s' if n_sites > 1 else ''} in one pass"
            )
        t0 = time.perf_counter()
        if some.activations is not None:  # every SAE of the comparison reads the one cache
            from saehealth.activations.scoring import score_cache

            outputs = score_cache([plans[i] for i in pending], options, self.console)
        else:
            with progress(self.console, share_of_tokens(some)) as advance:
                outputs = score_batches(
                    some.model,
                    [(plans[i].route or plans[i].site, plans[i].sae) for i in pending],
                    token_batches(some, options),
                    options.include_special_tokens,
                    options.device,
                    advance,
                    reference_sequence(some, options),
                    options.examples,
                    pathological="pathological" not in options.skip,
                )
        seconds = time.perf_counter() - t0
        self.timing["pass_s"] = seconds
        if outputs is None:
            return None
        self.paired, self.scored = outputs[0].paired, pending
        if self.config.replace_all and some.activations is None and len(pending) == len(evaluations):
            t0, members = time.perf_counter(), [(plans[i].site, plans[i].sae) for i in pending]
            batches = token_batches(some, options)
            self.replace_all = replace_all_metrics(
                some.model, members, batches, options.include_special_tokens, options.device
            )
            self.timing["replace_all_s"] = time.perf_counter() - t0
        results: dict[int, EvalResult] = {}
        for i, output in zip(pending, outputs, strict=True):
            evaluation, plan = evaluations[i], plans[i]
            if plan.route is not None:  # the routing section, notes and reasons, as its eval adds them
                routed_output(plan, output, evaluation.notes, evaluation.not_measured)
            evaluation.check_pass(plan, output)
            if len(pending) > 1:
                evaluation.notes.append(
                    f"Scored in one pass shared with {len(pending) - 1} other SAE(s) of {plan.model_name}: "
                    "replay_s is that pass's time."
                )
            results[i] = evaluation.finish(plan, output, replay_s=seconds)
        return results
