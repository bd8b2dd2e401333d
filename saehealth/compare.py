"""`saehealth compare`: several SAEs, from any library, side by side on identical tokens.

Settings are resolved once for all SAEs: the model (from --model or the SAEs, which must agree), the context
length (the SAEs must agree unless --context-length is given), the dataset and split (from the options or the
first SAE that records one), the token count and seed. Each SAE then runs through the single-SAE evaluation
steps (`evaluate.Evaluation`: resolve, finish) with those settings written into its config, so its result is
what `saehealth eval` gives for it with the same options. The pass is shared: SAEs reading the same hook are
scored in one `score_batches` call, whose prefix, clean and zero-ablated continuations run once per batch;
SAEs at other hooks form their own groups over the same token batches.

Each SAE keeps its own result folder, `<out>/<name>/` (result.json, details, report.md), reused unless
--force as in eval. The comparison itself is `<out>/comparison.json` and `<out>/comparison.md` with frontier
plots (report/compare_report.py).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from saehealth.config import DEFAULT_HTML_LATENTS, EvalConfig, check_html_latents
from saehealth.errors import ConfigError
from saehealth.evaluation import Evaluation, _progress, score_batches
from saehealth.loading.files import natural_key
from saehealth.replay import SpliceSite
from saehealth.result import EvalResult, _atomic_write

COMPARISON_JSON = "comparison.json"
COMPARISON_SCHEMA_VERSION = 1
DEFAULT_OUT = Path("reports") / "comparison"
# Checkpoint file names that say nothing about the SAE: such an SAE is named after its folder.
_GENERIC_STEMS = {"ae", "params", "sae", "sae_weights", "best_sae", "final_sae", "final", "model", "checkpoint"}
# Member folders of a multi-SAE run (sparsify hookpoints, dictionary_learning trainers): named with their run.
_MEMBER_NAME = re.compile(r"^(trainer_\d+|layers?[._]\d+.*|h\.\d+.*|blocks?[._]\d+.*)$")


@dataclass(frozen=True)
class CompareConfig:
    """What `saehealth compare` evaluates (paths, sweep globs) and where it writes; `evaluation` holds the
    options every SAE is evaluated with, validated by EvalConfig (its sae_path and out are set per SAE)."""

    paths: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()  # globs; every match is added after the paths
    out: Path | None = None
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(sae_path=""))
    html_latents: int = DEFAULT_HTML_LATENTS  # latents with full cards in each SAE's report.html

    def __post_init__(self) -> None:
        if not self.paths and not self.sweep:
            raise ConfigError(
                "Nothing to compare: give checkpoint paths, or --sweep 'GLOB' (e.g. 'checkpoints/sweep_*')."
            )
        check_html_latents(self.html_latents)

    @classmethod
    def of(
        cls, paths=(), sweep=(), out: Path | None = None, html_latents: int = DEFAULT_HTML_LATENTS, **options
    ) -> CompareConfig:
        """From checkpoint paths and any EvalConfig option as a keyword (n_tokens=, device=, skip=, ...)."""
        paths = [paths] if isinstance(paths, (str, Path)) else paths
        return cls(tuple(str(p) for p in paths), tuple(sweep), out, EvalConfig(sae_path="", **options), html_latents)

    @property
    def out_folder(self) -> Path:
        return Path(self.out) if self.out is not None else DEFAULT_OUT


@dataclass
class ComparedSAE:
    """One SAE of a comparison: its name (= its result folder's name), checkpoint and result."""

    name: str
    path: str
    result: EvalResult
    folder: Path
    reused: bool = False


@dataclass
class Comparison:
    """The outcome of `compare`: one entry per SAE, in the order given, and the shared settings."""

    entries: list[ComparedSAE]
    settings: dict
    out: Path
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # comparison.md, comparison.json, plots

    @property
    def identical_tokens(self) -> bool:
        """True when every result was computed on the same tokens (always, unless an old result was reused)."""
        keys = {_token_key(entry.result) for entry in self.entries}
        return len(keys) == 1

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(entry.result.sae.where for entry in self.entries))


def compare(paths=(), *, config: CompareConfig | None = None, console=None, **options) -> Comparison:
    """Evaluate several SAE checkpoints on identical tokens and write the comparison; returns it.

    Either pass a `CompareConfig`, or the paths, `sweep`, `out` and any `EvalConfig` option as keyword
    arguments: `saehealth.compare.compare(["a", "b"], sweep=("checkpoints/sweep_*",), n_tokens=20_000)`.
    Writes `<out>/<name>/` per SAE (result.json, details, report.md) and `<out>/comparison.{json,md}` with
    frontier plots.
    """
    if config is None:
        config = CompareConfig.of(paths, **options)
    elif options or paths:
        raise ConfigError("Pass either a config or paths and keyword options to compare(), not both.")
    return _Comparer(config, console).run()


def checkpoint_paths(paths, sweeps) -> list[str]:
    """The paths, then every match of each sweep glob (natural order), without repeats."""
    found: list[str] = list(paths)
    for pattern in sweeps:
        matches = sorted(glob.glob(os.path.expanduser(pattern)), key=natural_key)
        if not matches:
            raise ConfigError(
                f"--sweep {pattern!r} matches no file or folder: check the pattern (quote it so the shell leaves it)."
            )
        found += matches
    unique: dict[Path, str] = {}
    for path in found:
        unique.setdefault(Path(path).expanduser().resolve(), path)
    return list(unique.values())


def unique_names(paths: list[str]) -> list[str]:
    """Short folder-safe names for checkpoints: the folder (or informative file) name, its run folder's name
    in front for members of a run ('sweep-trainer_0', 'run-layers.3'), and as many parent folders prepended as
    it takes to tell equal names apart."""
    parts = []
    for path in paths:
        p = Path(path).expanduser().resolve()
        if p.is_file() or p.suffix in (".pt", ".npz", ".safetensors"):
            p = p.parent if p.stem in _GENERIC_STEMS else p.with_suffix("")
        parts.append([_safe(part) for part in p.parts if part not in ("/", "\\")] or ["sae"])
    depth = [2 if len(part) > 1 and _MEMBER_NAME.match(part[-1]) else 1 for part in parts]
    while True:
        names = ["-".join(part[-d:]) for part, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # identical paths down to the root cannot happen; numbered to be safe
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    return names


class _Comparer:
    """One comparison run: load every SAE, resolve the shared settings, shared passes per hook, write."""

    def __init__(self, config: CompareConfig, console=None):
        self.config = config
        self.console = console
        self.notes: list[str] = []
        self.timing: dict[str, float] = {}

    def run(self) -> Comparison:
        from saehealth.data import load_dataset
        from saehealth.models import load_model

        started = time.perf_counter()
        cfg, options = self.config, self.config.evaluation
        members = self._load_all(checkpoint_paths(cfg.paths, cfg.sweep))
        names = unique_names([path for path, _, _ in members])
        named = [(name, loaded) for name, (_, loaded, _) in zip(names, members, strict=True)]
        model_name, kwargs = self._shared_model(named), self._shared_model_kwargs(named)
        t0 = time.perf_counter()
        model = load_model(model_name, device=options.device, dtype=options.dtype, from_pretrained_kwargs=kwargs)
        self.timing["load_model_s"] = time.perf_counter() - t0
        template = replace(options, model=model_name)
        context = self._shared_context(template, model, names, [loaded for _, loaded, _ in members])
        dataset_name, split, dataset_notes = self._shared_dataset(template, model_name, names, members)
        self.notes += dataset_notes
        shared = replace(template, context_length=context, dataset=dataset_name, split=split)

        evaluations: list[Evaluation] = []
        for name, (path, loaded, seconds) in zip(names, members, strict=True):
            evaluation = Evaluation(replace(shared, sae_path=path, out=cfg.out_folder / name), loaded=loaded)
            evaluation.timing["load_sae_s"] = seconds
            evaluation.notes += dataset_notes
            if loaded.model_name is None:
                evaluation.notes.append(f"The checkpoint does not record its model: evaluated on {model_name}.")
            evaluations.append(evaluation)
        results: list[EvalResult | None] = [evaluation.load() for evaluation in evaluations]
        reused = [result is not None for result in results]
        if any(reused) and self.console is not None:
            names_reused = ", ".join(n for n, r in zip(names, reused, strict=True) if r)
            self.console.print(f"[dim]Reusing saved results of {names_reused} (pass --force to re-run).[/]")

        pending = [i for i, result in enumerate(results) if result is None]
        if pending:
            dataset = load_dataset(dataset_name, split)
            plans = {i: evaluations[i].resolve(model=model, dataset=dataset) for i in pending}
            results_new = self._score_groups(model, evaluations, plans)
            for i, result in results_new.items():
                results[i] = result

        entries = []
        for name, evaluation, result, was_reused in zip(names, evaluations, results, reused, strict=True):
            if was_reused and options.thresholds is not None:
                from saehealth.thresholds import assess, load_thresholds

                result.verdicts = assess(
                    result.metrics, result.not_measured, load_thresholds(options.thresholds), d_sae=result.sae.d_sae
                )
            entries.append(ComparedSAE(name, evaluation.config.sae_path, result, cfg.out_folder / name, was_reused))

        first = entries[0].result.eval
        settings = {
            "model": first.model,
            "dataset": first.dataset,
            "split": first.split,
            "context_length": first.context_length,
            "n_tokens": first.n_tokens,
            "tokens_scored": first.tokens_scored,
            "n_sequences": first.n_sequences,
            "seed": first.seed,
            "mask_special_tokens": first.mask_special_tokens,
            "requested_tokens": options.n_tokens,
            "thresholds": options.thresholds or "default",
            "skip": list(options.skip),
        }
        comparison = Comparison(entries, settings, cfg.out_folder, self.notes, self.timing)
        if not comparison.identical_tokens:
            comparison.notes.append(
                "Not every result was computed on the same tokens (a saved result from another run was reused): "
                "pass --force to re-run them all."
            )
        self._write(comparison, started)
        return comparison

    # ------------------------------------------------------------------ loading and shared settings
    def _load_all(self, paths: list[str]) -> list[tuple[str, object, float]]:
        """(sae_path, LoadedSAE, load seconds) per SAE; a folder of several SAEs gives one entry per member."""
        from saehealth.loading import load_checkpoint

        options = self.config.evaluation
        members: list[tuple[str, object, float]] = []
        seen: set[Path] = set()
        t_all = time.perf_counter()
        for path in paths:
            t0 = time.perf_counter()
            loaded = load_checkpoint(path, hook=options.hook, device=options.device, dtype=options.dtype)
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

    def _shared_model(self, named: list[tuple[str, object]]) -> str:
        if self.config.evaluation.model:
            return self.config.evaluation.model
        by_model: dict[str, list[str]] = {}
        for name, loaded in named:
            if loaded.model_name:
                by_model.setdefault(loaded.model_name, []).append(name)
        if not by_model:
            raise ConfigError("None of the SAEs says which model it was trained on: pass --model NAME.")
        if len(by_model) > 1:
            raise ConfigError(
                f"The SAEs were trained on different models ({_grouped(by_model)}): compare SAEs of one model, "
                "or pass --model NAME to evaluate them all on it."
            )
        return next(iter(by_model))

    def _shared_model_kwargs(self, named: list[tuple[str, object]]) -> dict:
        """The one way of loading the model that every SAE was trained with (its weight processing)."""
        from saehealth.models import processing_label

        by_processing: dict[str, list[str]] = {}
        for name, loaded in named:
            by_processing.setdefault(processing_label(loaded.model_from_pretrained_kwargs), []).append(name)
        if len(by_processing) > 1:
            raise ConfigError(
                f"The SAEs were trained on differently processed models ({_grouped(by_processing)}; from their "
                "model_from_pretrained_kwargs): compare SAEs trained on the same activations, in separate runs."
            )
        return named[0][1].model_from_pretrained_kwargs

    def _shared_context(self, template: EvalConfig, model, names: list[str], loaded: list) -> int:
        """The context length every SAE is evaluated at: --context-length, else the one the SAEs record
        (after capping at the model's context, as eval does); SAEs that record none go along with the rest."""
        probe = Evaluation(template)
        if template.context_length is not None:
            return probe.context_length(model, loaded[0])
        by_context: dict[int, list[str]] = {}
        for name, item in zip(names, loaded, strict=True):
            if item.context_size:
                by_context.setdefault(probe.context_length(model, item), []).append(name)
        if len(by_context) > 1:
            raise ConfigError(
                f"The SAEs were trained on different context lengths ({_grouped(by_context)}): "
                "pass --context-length N to evaluate them all on N-token sequences."
            )
        return next(iter(by_context)) if by_context else probe.context_length(model, loaded[0])

    def _shared_dataset(self, template: EvalConfig, model_name: str, names, members) -> tuple[str, str, list[str]]:
        """(dataset, split, notes) from the options, else the first SAE that records a dataset."""
        first_error = None
        for name, (_, loaded, _) in zip(names, members, strict=True):
            probe = Evaluation(template)
            try:
                dataset, split = probe.dataset_choice(model_name, loaded)
            except ConfigError as exc:
                first_error = first_error or exc
                continue
            notes = list(probe.notes)
            if template.dataset is None and dataset == loaded.dataset_path:
                others = sorted({m[1].dataset_path for m in members if m[1].dataset_path not in (None, dataset)})
                if others:
                    notes.append(
                        f"The SAEs record different training datasets ({', '.join([dataset, *others])}): all are "
                        f"evaluated on {dataset}, the one {name} records; pass --dataset to choose another."
                    )
            return dataset, split, notes
        raise ConfigError("None of the SAEs records its training dataset: pass --dataset NAME.") from first_error

    # ------------------------------------------------------------------ the shared passes
    def _score_groups(self, model, evaluations: list[Evaluation], plans: dict) -> dict[int, EvalResult]:
        """One `score_batches` pass per splice site over the same token batches; finish every result."""
        from saehealth.data import sequence_batches

        options = self.config.evaluation
        groups: dict[SpliceSite, list[int]] = {}  # SAEs at the same site (hooks and head) share a pass
        for i, plan in plans.items():
            groups.setdefault(plan.site, []).append(i)
        some = next(iter(plans.values()))
        # Tokenised once and reused by every group: identical tokens by construction.
        batches = list(
            sequence_batches(
                some.dataset, model.tokenizer, some.context, some.n_sequences, options.batch_size, options.seed
            )
        )
        results: dict[int, EvalResult] = {}
        passes: dict[str, float] = {}
        for site, members in groups.items():
            where = site.hook_name if not site.is_transcoder else f"{site.input_hook} → {site.hook_name}"
            if site.head_index is not None:
                where += f" (head {site.head_index})"
            if self.console is not None:
                self.console.print(f"Scoring {len(members)} SAE{'s' if len(members) > 1 else ''} at {where}")
            t0 = time.perf_counter()
            with _progress(self.console, some.n_sequences * some.context) as advance:
                outputs = score_batches(
                    model,
                    site,
                    [plans[i].sae for i in members],
                    batches,
                    options.include_special_tokens,
                    options.device,
                    advance,
                    options.examples,
                )
            seconds = time.perf_counter() - t0
            passes[where] = seconds
            for i, output in zip(members, outputs, strict=True):
                evaluation, plan = evaluations[i], plans[i]
                evaluation.check_pass(plan, output)
                if len(members) > 1:
                    evaluation.notes.append(
                        f"Scored by `saehealth compare` in one pass shared with {len(members) - 1} other SAE(s) at "
                        f"{where}: replay_s is that pass's time."
                    )
                results[i] = evaluation.finish(plan, output, replay_s=seconds)
        self.timing["passes_s"] = passes
        return results

    # ------------------------------------------------------------------ output
    def _write(self, comparison: Comparison, started: float) -> None:
        """Per-SAE report.md and report.html, then comparison.md and .html with frontier plots and comparison.json."""
        from saehealth.report.compare_report import write_comparison_report
        from saehealth.report.pages import write_reports
        from saehealth.result import load_details

        t0 = time.perf_counter()
        for entry in comparison.entries:
            write_reports(entry.result, load_details(entry.folder), entry.folder, html_latents=self.config.html_latents)
        comparison.files.update(write_comparison_report(comparison, comparison.out))
        path = comparison.out / COMPARISON_JSON
        comparison.files["json"] = path
        self.timing["reports_s"] = time.perf_counter() - t0
        self.timing["total_s"] = time.perf_counter() - started
        text = json.dumps(comparison_to_dict(comparison), indent=2, allow_nan=False) + "\n"
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------------------------------------- summary
# The columns of every comparison view (table, markdown, JSON), in order.
SUMMARY_KEYS = (
    "l0",
    "loss_recovered",
    "delta_ce",
    "kl_div_score",
    "explained_variance",
    "dead_fraction",
    "absorption_fraction",
)


def healthy_count(result: EvalResult) -> tuple[int, int]:
    """(healthy, total) over the headline verdicts."""
    from saehealth.report.text import verdicts_of
    from saehealth.thresholds import HEALTHY

    headline = [v for v in verdicts_of(result).values() if v.get("headline")]
    return sum(v["status"] == HEALTHY for v in headline), len(headline)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both counts (lower x and higher y), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def frontier_names(comparison: Comparison, y_key: str = "loss_recovered") -> list[str]:
    """Names of the SAEs on the L0 vs `y_key` frontier of their hook (SAEs at different hooks are not rivals),
    among those with both metrics measured; by hook, then by L0."""
    names = []
    for group in frontier_groups(comparison, y_key).values():
        names += [group[i][0] for i in pareto_front([point for _, point in group])]
    return names


def frontier_groups(comparison: Comparison, y_key: str) -> dict[str, list[tuple[str, tuple[float, float]]]]:
    """hook -> [(name, (L0, y))] over the SAEs with both metrics measured, in comparison order."""
    groups: dict[str, list[tuple[str, tuple[float, float]]]] = {}
    for e in comparison.entries:
        x, y = e.result.metrics.get("l0"), e.result.metrics.get(y_key)
        if x is not None and y is not None:
            groups.setdefault(e.result.sae.where, []).append((e.name, (float(x), float(y))))
    return groups


def comparison_to_dict(comparison: Comparison) -> dict:
    """The JSON summary: shared settings, one row per SAE (headline metrics, statuses, where its result is)."""
    from saehealth.report.text import verdicts_of

    on_front = set(frontier_names(comparison))
    saes = []
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        healthy, total = healthy_count(r)
        saes.append(
            {
                "name": entry.name,
                "path": entry.path,
                "result": os.path.relpath(entry.folder / "result.json", comparison.out),
                "report": os.path.relpath(entry.folder / "report.md", comparison.out),
                "library": r.sae.source_library,
                "architecture": r.sae.architecture,
                "hook": r.sae.hook_name,
                "output_hook": r.sae.output_hook_name,
                "hook_head_index": r.sae.hook_head_index,
                "d_in": r.sae.d_in,
                "d_sae": r.sae.d_sae,
                "metrics": {key: r.metrics.get(key) for key in SUMMARY_KEYS},
                "uncertainty": {key: r.uncertainty[key] for key in SUMMARY_KEYS if key in r.uncertainty},
                "status": {key: verdicts[key]["status"] for key in SUMMARY_KEYS if key in verdicts},
                "healthy": healthy,
                "headline_metrics": total,
                "summary": f"{healthy}/{total} healthy",
                "on_frontier": entry.name in on_front,
                "reused": entry.reused,
            }
        )
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "settings": comparison.settings,
        "identical_tokens": comparison.identical_tokens,
        "hooks": comparison.hooks,
        "saes": saes,
        "frontier_l0_loss_recovered": frontier_names(comparison, "loss_recovered"),
        "frontier_l0_explained_variance": frontier_names(comparison, "explained_variance"),
        "files": {key: os.path.relpath(path, comparison.out) for key, path in comparison.files.items()},
        "notes": comparison.notes,
        "timing": _rounded(comparison.timing),
    }


# ---------------------------------------------------------------------------------------------- helpers
def _token_key(result: EvalResult) -> tuple:
    e = result.eval
    return (e.model, e.dataset, e.split, e.n_tokens, e.tokens_scored, e.context_length, e.seed, e.mask_special_tokens)


def _grouped(by_value: dict) -> str:
    """'X: a, b; Y: c' with at most three names per value."""
    parts = []
    for value, names in by_value.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{value}: {shown}")
    return "; ".join(parts)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("_") or "sae"


def _rounded(timing: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 4) for k, v in timing.items()}
