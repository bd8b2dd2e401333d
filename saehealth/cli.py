"""The `saehealth` command line.

Every user mistake surfaces as a `SaeHealthError`; `main()` turns it into one red line and exit code 1
(`--debug` shows the traceback instead). Options are declared once, here, with typer `Annotated`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from saehealth.config import DEFAULT_EXAMPLES, DEFAULT_HTML_LATENTS, check_html_latents
from saehealth.errors import SaeHealthError


class _FlagsAsFlags:
    """--help shows boolean flags without a value type (typer 0.29 renders `--force <bool>`, as if it took one)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsAsFlags, typer.core.TyperCommand):
    pass


class _Group(_FlagsAsFlags, typer.core.TyperGroup):
    pass


class _Typer(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="saehealth",
    help="Is your sparse autoencoder any good? Evaluate, report on, compare and train SAEs.",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """saehealth: evaluation-centric toolkit for sparse autoencoders, built on SAELens."""


# ------------------------------------------------------------------ report and thresholds
# Shared option types: eval and compare reuse them, so each option is declared once.
ThresholdsOption = Annotated[
    str | None,
    typer.Option(
        "--thresholds",
        help="Health bands: a preset (default, strict, lenient) or a TOML/YAML file. See `saehealth thresholds`.",
    ),
]
StrictOption = Annotated[bool, typer.Option("--strict", help="Exit with code 2 when a headline metric is unhealthy.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the one-line verdict.")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result with verdicts and advice as JSON instead of the report.")
]
WandbOption = Annotated[
    str | None,
    typer.Option(
        "--wandb", metavar="PROJECT", help="Also log metrics, verdicts, plots and the JSON to this W&B project."
    ),
]
ModelOption = Annotated[str | None, typer.Option(help="Model name or folder (default: the checkpoint's).")]
HookOption = Annotated[str | None, typer.Option(help="TransformerLens hook (default: the checkpoint's).")]
DatasetOption = Annotated[str | None, typer.Option(help="Built-in, local path or hub dataset.")]
SplitOption = Annotated[str | None, typer.Option(help="Dataset split (default: a held-out one).")]
TokensOption = Annotated[int | None, typer.Option("--tokens", help="Tokens to evaluate (default: up to 200k).")]
NumSamplesOption = Annotated[int | None, typer.Option(help="Sequences to evaluate, instead of --tokens.")]
ContextLengthOption = Annotated[int | None, typer.Option(help="Tokens per sequence (default: the checkpoint's).")]
BatchSizeOption = Annotated[int, typer.Option(help="Sequences per batch.")]
DeviceOption = Annotated[
    str, typer.Option(help="auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps.")
]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16.")]
SeedOption = Annotated[int, typer.Option(help="Seed for data order and probes.")]
IncludeSpecialTokensOption = Annotated[
    bool, typer.Option("--include-special-tokens", help="Score BOS/EOS/PAD positions too.")
]
SkipOption = Annotated[
    list[str] | None, typer.Option(metavar="GROUP", help="Skip a metric group: absorption, geometry (repeatable).")
]
SelectOption = Annotated[
    str | None,
    typer.Option(
        metavar="GLOB", help="Glob over the SAEs of a run folder (hookpoint or member names), e.g. 'layers.*'."
    ),
]
ActivationsOption = Annotated[
    str | None,
    typer.Option(
        "--activations",
        metavar="PATH",
        help="Score on this activation cache instead of replaying the model: a minSAE cache, a SAELens activation "
        "dataset, or a .safetensors/.npy file (no loss or KL; absorption only with --model).",
    ),
]
SaebenchOutOption = Annotated[
    Path | None,
    typer.Option(
        "--saebench-out",
        metavar="DIR",
        help="Also write SAEBench 0.6 result files (DIR/core/, DIR/absorption/) for its graphing code.",
    ),
]
ExamplesOption = Annotated[
    int,
    typer.Option(
        "--examples",
        help="Latent examples kept per latent: top activations (and a random sample of half as many); 0: none.",
    ),
]
HtmlLatentsOption = Annotated[
    int, typer.Option("--html-latents", help="Latents with full cards (contexts) in report.html.")
]
AbsorptionProbesOption = Annotated[
    str,
    typer.Option(
        "--absorption-probes",
        help="Absorption probe schedule: converged (trained to convergence) or saebench-0.6 (SAEBench's epochs).",
    ),
]


@app.command("eval")
def eval_command(
    sae_path: Annotated[str, typer.Option("--sae-path", help="SAE checkpoint folder or file.")],
    model: ModelOption = None,
    hook: HookOption = None,
    layer: Annotated[int | None, typer.Option(help="Use the checkpoint's hook type at this layer.")] = None,
    dataset: DatasetOption = None,
    split: SplitOption = None,
    tokens: TokensOption = None,
    num_samples: NumSamplesOption = None,
    context_length: ContextLengthOption = None,
    batch_size: BatchSizeOption = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    seed: SeedOption = 42,
    out: Annotated[Path | None, typer.Option(help="Result folder (default: reports/<checkpoint name>/).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run even if a result exists.")] = False,
    include_special_tokens: IncludeSpecialTokensOption = False,
    skip: SkipOption = None,
    absorption_probes: AbsorptionProbesOption = "converged",
    format: Annotated[str | None, typer.Option("--format", help="Force a checkpoint format.")] = None,
    select: SelectOption = None,
    thresholds: ThresholdsOption = None,
    activations: ActivationsOption = None,
    saebench_out: SaebenchOutOption = None,
    examples: ExamplesOption = DEFAULT_EXAMPLES,
    html_latents: HtmlLatentsOption = DEFAULT_HTML_LATENTS,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    strict: StrictOption = False,
    wandb_project: WandbOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print timings and notes.")] = False,
) -> None:
    """Evaluate an SAE on real model activations: reconstruction, downstream loss, sparsity, absorption.

    Writes result.json, its per-latent companions (details; latent examples and logit lens), report.md with
    plots and report.html with the latent browser to the result folder, prints the health report, and with
    --strict exits 2 when a headline metric is unhealthy. A run folder holding SAEs at several hooks (sparsify,
    SAELens multi-SAE, dictionary_learning trainers) is evaluated whole in one pass: one result folder per SAE and
    run_report.md / run.json beside them."""
    from saehealth.compare import evaluate_path
    from saehealth.comparison import Comparison
    from saehealth.config import EvalConfig
    from saehealth.evaluation import result_folder

    config = EvalConfig(
        sae_path=sae_path,
        model=model,
        hook=hook,
        layer=layer,
        dataset=dataset,
        split=split,
        n_tokens=tokens,
        num_samples=num_samples,
        context_length=context_length,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        out=out,
        force=force,
        include_special_tokens=include_special_tokens,
        skip=tuple(skip or ()),
        absorption_probes=absorption_probes,
        format=format,
        thresholds=thresholds,
        activations=activations,
        saebench_out=saebench_out,
        examples=examples,
        html_latents=html_latents,
        verbose=verbose,
    )
    outcome = evaluate_path(config, select, console=_console_for(quiet or json_output))
    if outcome is None:  # a torchrun rank other than 0: rank 0 reports
        return
    if isinstance(outcome, Comparison):
        _present_comparison(outcome, quiet=quiet, json_output=json_output, strict=strict, wandb_project=wandb_project)
        return
    _present(
        outcome,
        result_folder(config),
        quiet=quiet,
        json_output=json_output,
        strict=strict,
        wandb_project=wandb_project,
        verbose=verbose,
    )


@app.command("compare")
def compare_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CHECKPOINT", help="SAE checkpoints (folders or files), any library.", show_default=False
        ),
    ] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB", help="Also compare every checkpoint matching this glob, e.g. 'checkpoints/sweep_*'."
        ),
    ] = None,
    model: ModelOption = None,
    hook: Annotated[str | None, typer.Option(help="TransformerLens hook for every SAE (default: each one's).")] = None,
    dataset: DatasetOption = None,
    split: SplitOption = None,
    tokens: TokensOption = None,
    num_samples: NumSamplesOption = None,
    context_length: ContextLengthOption = None,
    batch_size: BatchSizeOption = 16,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    seed: SeedOption = 42,
    out: Annotated[
        Path | None,
        typer.Option(help="Comparison folder, one result folder per SAE inside (default: reports/comparison/)."),
    ] = None,
    select: SelectOption = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run SAEs whose results exist.")] = False,
    include_special_tokens: IncludeSpecialTokensOption = False,
    skip: SkipOption = None,
    absorption_probes: AbsorptionProbesOption = "converged",
    thresholds: ThresholdsOption = None,
    activations: ActivationsOption = None,
    saebench_out: SaebenchOutOption = None,
    examples: ExamplesOption = DEFAULT_EXAMPLES,
    html_latents: HtmlLatentsOption = DEFAULT_HTML_LATENTS,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print comparison.json instead of the table.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit with code 2 when any SAE has an unhealthy headline metric.")
    ] = False,
    wandb_project: Annotated[
        str | None,
        typer.Option("--wandb", metavar="PROJECT", help="Also log each SAE as a W&B run, grouped by comparison."),
    ] = None,
) -> None:
    """Compare SAEs from any library side by side on identical tokens: table, comparison.md, frontier plots.

    Every SAE is evaluated on the same model, dataset, split, context length and tokens; SAEs at the same hook
    share one pass (clean and zero-ablated runs computed once). Each SAE gets its own result folder
    <out>/<name>/ (reused unless --force), and <out>/comparison.md, comparison.json and L0-frontier plots
    sum them up. With --strict the exit code is 2 when any SAE has an unhealthy headline metric."""
    from saehealth.compare import CompareConfig, compare

    config = CompareConfig.of(
        paths or (),
        sweep=sweep or (),
        out=out,
        select=select,
        model=model,
        hook=hook,
        dataset=dataset,
        split=split,
        n_tokens=tokens,
        num_samples=num_samples,
        context_length=context_length,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        force=force,
        include_special_tokens=include_special_tokens,
        skip=tuple(skip or ()),
        absorption_probes=absorption_probes,
        thresholds=thresholds,
        activations=activations,
        saebench_out=saebench_out,
        examples=examples,
        html_latents=html_latents,
    )
    comparison = compare(config=config, console=_console_for(quiet or json_output))
    if comparison is not None:  # None on torchrun ranks other than 0: rank 0 reports
        _present_comparison(
            comparison, quiet=quiet, json_output=json_output, strict=strict, wandb_project=wandb_project
        )


def _console_for(silent: bool):
    """The console progress and notes go to: none when asked to be quiet, or on torchrun ranks other than 0."""
    from saehealth.distributed import ranks

    return None if silent or not ranks().first else console


def _present_comparison(comparison, *, quiet: bool, json_output: bool, strict: bool, wandb_project: str | None):
    """Print the side-by-side table (or its JSON), log to W&B, apply --strict."""
    import json

    from saehealth.comparison import comparison_to_dict
    from saehealth.report.compare_report import print_comparison
    from saehealth.thresholds import is_unhealthy

    logged = _log_comparison(comparison, wandb_project) if wandb_project else {}
    if json_output:
        summary = comparison_to_dict(comparison)
        if logged:
            summary["wandb"] = logged
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        print_comparison(comparison, console, quiet=quiet)
        for name, location in logged.items():
            console.print(f"W&B {name}: {location}", highlight=False)
    if strict and any(is_unhealthy(entry.result.verdicts) for entry in comparison.entries):
        raise SystemExit(2)  # see _present: typer.Exit codes are swallowed in standalone_mode=False


def _log_comparison(comparison, project: str) -> dict[str, str]:
    """One W&B run per compared SAE, grouped under the comparison folder's name; {name: location}."""
    from saehealth.result import load_details
    from saehealth.wandb_log import log_to_wandb

    group = f"saehealth-compare-{comparison.out.resolve().name}"
    return {
        entry.name: log_to_wandb(
            entry.result, load_details(entry.folder), entry.folder, project=project, name=entry.name, group=group
        )
        for entry in comparison.entries
    }


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Result and report folder.")] = Path("reports/demo"),
    checkpoint: Annotated[Path, typer.Option(help="Where the demo SAE is (trained there if missing).")] = Path(
        "checkpoints/demo"
    ),
    force: Annotated[bool, typer.Option("--force", help="Re-run the evaluation even if a result exists.")] = False,
    device: DeviceOption = "auto",
    html_latents: HtmlLatentsOption = DEFAULT_HTML_LATENTS,
    quiet: QuietOption = False,
    strict: StrictOption = False,
) -> None:
    """The whole job on the built-in model, offline: train the demo SAE (if missing), evaluate it, report.

    Trains with the packaged demo config through SAELens (under a minute on 2 CPU cores), then runs
    `saehealth eval` on it and writes result.json, report.md with plots and report.html to --out."""
    from saehealth import training
    from saehealth.config import EvalConfig
    from saehealth.evaluation import evaluate
    from saehealth.output import check_output_folder

    check_html_latents(html_latents)
    check_output_folder(out, "result")  # before training, not after it
    trained_now = not (checkpoint / "cfg.json").is_file()
    if trained_now:
        console.print(f"[bold]Training the demo SAE[/] into {checkpoint} (SAELens, built-in model) ...")
        training.train("demo", {"output_path": str(checkpoint)})
    # A freshly trained SAE is always evaluated, so the demo runs the whole job even where a saved report
    # of identical weights exists (training is deterministic on one machine, so a fresh clone has one).
    config = EvalConfig(
        sae_path=str(checkpoint), out=out, force=force or trained_now, device=device, html_latents=html_latents
    )
    result = evaluate(config=config, console=None if quiet else console)
    _present(result, out, quiet=quiet, json_output=False, strict=strict, wandb_project=None)


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[CONFIG] [--key value ...]",
)
def train_command(ctx: typer.Context) -> None:
    """Train an SAE with SAELens from a YAML/JSON runner config, with --key value overrides.

    CONFIG is a LanguageModelSAERunnerConfig in SAELens' field names (e.g. scripts/configs/demo.yaml,
    or 'demo' for the packaged one); without it, saehealth's defaults: the built-in model and corpus,
    blocks.0.hook_resid_post, a standard SAE at expansion factor 8.

    Any config field is an option: --model_name --hook_name --layer --architecture --expansion_factor
    --d_sae --k --training_tokens --lr --l1_coefficient --normalize_activations --output_name
    --dataset_path --train_batch_size_tokens --context_size --device --log_to_wandb, and SAE or logger
    fields directly or dotted (--sae.k 32). Values are YAML scalars (true, 1e-4, 64, null).
    Architectures: standard, topk, batchtopk, matryoshka_batchtopk, jumprelu, gated (any SAELens trains).

    The SAE is saved in SAELens' format to checkpoints/<output_name>/ under the current directory.
    """
    from saehealth import training

    config, overrides = training.split_cli_args(ctx.args)
    path = training.train(config, overrides)
    console.print(str(path), highlight=False, soft_wrap=True)


@app.command("report")
def report_command(
    result_path: Annotated[Path, typer.Argument(help="A result.json, or the folder holding one.", show_default=False)],
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and plots/ (default: the result's folder).")
    ] = None,
    thresholds: ThresholdsOption = None,
    html_latents: HtmlLatentsOption = DEFAULT_HTML_LATENTS,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    strict: StrictOption = False,
    wandb_project: WandbOption = None,
) -> None:
    """Regenerate the terminal, markdown and HTML health reports from a saved result, without loading any model.

    Verdicts are recomputed when --thresholds is given; otherwise the saved ones are used."""
    from saehealth.output import check_output_folder, report_target, save_report_folder
    from saehealth.result import load_details, load_result
    from saehealth.thresholds import assess, load_thresholds

    check_html_latents(html_latents)
    result = load_result(result_path)  # the input first: a missing result is the problem to name
    source = result_path if result_path.is_dir() else result_path.parent
    folder = out if out is not None else source
    check_output_folder(*report_target(folder, result_path)[:2])
    if thresholds is not None or not result.verdicts:
        result.verdicts = assess(
            result.metrics, result.not_measured, load_thresholds(thresholds), d_sae=result.sae.d_sae
        )
    save_report_folder(folder, result, load_details(result_path), result_path, html_latents=html_latents)
    _present(
        result,
        folder,
        quiet=quiet,
        json_output=json_output,
        strict=strict,
        wandb_project=wandb_project,
        source=source,
    )


def _present(
    result,
    folder: Path,
    *,
    quiet: bool,
    json_output: bool,
    strict: bool,
    wandb_project: str | None,
    verbose: bool = False,
    source: Path | None = None,
) -> None:
    """Print the report (or JSON) of a result whose folder is written (its details read from `source` when the
    reports went elsewhere), log to W&B, apply --strict."""
    import dataclasses
    import json

    from saehealth.advice import advise
    from saehealth.report import print_report
    from saehealth.report.html import REPORT_HTML
    from saehealth.report.markdown import REPORT_FILE
    from saehealth.result import load_details
    from saehealth.thresholds import headline_summary, is_unhealthy

    details = load_details(source or folder)
    report_path, html_path = folder / REPORT_FILE, folder / REPORT_HTML
    location = None
    if wandb_project:
        from saehealth.wandb_log import log_to_wandb

        location = log_to_wandb(result, details, folder, project=wandb_project)
    if json_output:
        data = {
            **result.to_dict(),
            "summary": headline_summary(result.verdicts),
            "unhealthy": is_unhealthy(result.verdicts),
            "advice": [dataclasses.asdict(f) for f in advise(result, details)],
            "report": str(report_path),
            "report_html": str(html_path),
            "wandb": location,
        }
        typer.echo(json.dumps(data, indent=2, allow_nan=False))
    else:
        print_report(result, details, console, quiet=quiet)
        if not quiet:
            console.print(
                f"Result: {folder / 'result.json'}\nMarkdown report: {report_path}\nHTML report (latent browser): "
                f"{html_path}\nLatent cards in the terminal: saehealth latents {folder}",
                highlight=False,
            )
            if location:
                console.print(f"W&B: {location}", highlight=False)
            if verbose:
                console.print(f"[dim]timing (s): {result.timing}[/]")
    if strict and is_unhealthy(result.verdicts):
        # SystemExit, not typer.Exit: main() runs typer with standalone_mode=False, which swallows Exit codes.
        raise SystemExit(2)


@app.command("latents")
def latents_command(
    result_path: Annotated[Path, typer.Argument(help="A result folder (or its result.json).", show_default=False)],
    ids: Annotated[list[int] | None, typer.Option("--id", help="Print this latent's card (repeatable).")] = None,
    group: Annotated[
        str | None,
        typer.Option(help="Print the cards of a group: dense, dead, duplicates, absorption, high, low, random."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Cards printed for --group.")] = 5,
    contexts: Annotated[int, typer.Option(help="Top and sampled contexts per card.")] = 5,
) -> None:
    """Latent cards in the terminal from a saved result, without loading the model: density, activations,
    logit lens, and contexts with the firing tokens highlighted.

    Without --id or --group, lists the groups (each tied to the health finding it explains) and their ids."""
    from saehealth.report.latent_cards import show_latents

    show_latents(result_path, console, ids=ids or [], group=group, limit=limit, contexts=contexts)


@app.command("thresholds")
def thresholds_command(
    spec: Annotated[
        str | None,
        typer.Argument(
            help="A preset name or a TOML/YAML file (default: list the presets and show 'default').", show_default=False
        ),
    ] = None,
    toml: Annotated[bool, typer.Option("--toml", help="Print the bands as a TOML file to copy and edit.")] = False,
) -> None:
    """List the threshold presets, or show one preset or file as a table."""
    from saehealth.report import print_thresholds
    from saehealth.thresholds import get_preset, load_thresholds, preset_names, thresholds_to_toml

    chosen = load_thresholds(spec)
    if toml:
        typer.echo(thresholds_to_toml(chosen))
        return
    presets = [get_preset(name) for name in preset_names()] if spec is None else None
    print_thresholds(chosen, console, presets=presets)


@app.command("inspect")
def inspect_command(
    path: Annotated[str, typer.Argument(help="SAE checkpoint folder or file.", show_default=False)],
    format: Annotated[str | None, typer.Option("--format", help="Force a checkpoint format.")] = None,
    hook: Annotated[str | None, typer.Option(help="Pick (run folders) or override the TransformerLens hook.")] = None,
    select: SelectOption = None,
) -> None:
    """Show what a checkpoint was detected as: library, format, architecture, sizes, hook mapping, training facts."""
    from saehealth.loading import load_checkpoint
    from saehealth.loading.describe import describe, summarize

    loaded = load_checkpoint(path, format=format, hook=hook, select=select)
    console.print(summarize(loaded) if isinstance(loaded, list) else describe(loaded))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app; a user error is one line and exit code 1, Ctrl-C exit code 130."""
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C, so unfinished output is removed on the way out.
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        _run(argv, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str], debug: bool) -> None:
    try:
        # Without standalone mode click returns a command's exit code instead of exiting with it.
        code = app(args=argv, prog_name="saehealth", standalone_mode=False)
    except SaeHealthError as exc:
        if debug:
            raise
        from saehealth import distributed

        if not distributed.ranks().first:  # under torchrun rank 0 says it once
            sys.exit(0 if distributed.agreed(exc) else 1)
        _fail(str(exc))
    except USAGE_ERRORS as exc:
        if debug:
            raise
        _fail(_usage_message(exc, argv))
    except (KeyboardInterrupt, typer.Abort) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt)
        _fail("interrupted: unfinished output was not written.", 130) if interrupted else _fail("aborted.")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    finally:
        _leave_process_group()
    if code == 130:  # typer >= 0.29 turns Ctrl-C into this exit code itself
        _fail("interrupted: unfinished output was not written.", 130)
    if isinstance(code, int) and code:
        sys.exit(code)


def _leave_process_group() -> None:
    """torchrun ranks leave their process group before exiting (torch warns otherwise)."""
    if "torch" in sys.modules:
        from saehealth.distributed import finish

        finish()


def _usage_error_classes() -> tuple[type[BaseException], ...]:
    """The ClickException classes the installed typer raises: its vendored copy (typer >= 0.29), click's, or both."""
    import importlib

    classes = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


USAGE_ERRORS = _usage_error_classes()


def _usage_message(exc: BaseException, argv: list[str]) -> str:
    """'No such option: --tokenz (Possible options: --tokens). See `saehealth eval --help`.' on one line."""
    text = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path:
        command = ctx.command_path
    else:  # errors raised while parsing carry no context: name the command from the arguments
        names = {info.name for info in app.registered_commands}
        command = " ".join(["saehealth", *[arg for arg in argv if arg in names][:1]])
    return f"{text}{'' if text.endswith(('.', '?', '!')) else '.'} See `{command} --help`."


def _fail(message: str, code: int = 1) -> NoReturn:
    from rich.markup import escape

    # The message is the user's text (paths, values): no rich markup or :emoji: codes in it.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    sys.exit(code)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
