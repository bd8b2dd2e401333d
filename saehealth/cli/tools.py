"""The commands around evaluation: train, report, latents, thresholds, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saehealth.cli.app import app, console
from saehealth.cli.options import (
    HtmlLatentsOption,
    JsonOption,
    QuietOption,
    RouteOption,
    SelectOption,
    StrictOption,
    ThresholdsOption,
    WandbOption,
)
from saehealth.cli.present import present
from saehealth.config import DEFAULT_HTML_LATENTS, check_html_latents


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

    --health-every TOKENS checks the SAE's health every TOKENS training tokens on held-out tokens
    (--health-tokens, default 4096; absorption at the final check, or every Nth with
    --health-absorption-every N): printed, logged to W&B as health/*, and written with a plot to
    training_health.json / training_health.png in the checkpoint folder.
    """
    from saehealth import training
    from saehealth.output import display_path
    from saehealth.training.health import pop_health_args

    args, health = pop_health_args(ctx.args)
    config, overrides = training.split_cli_args(args)
    path = training.train(config, overrides, health=health)
    console.print(display_path(path), highlight=False, soft_wrap=True)


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
    from saehealth.output import check_output_folder
    from saehealth.result import RESULT_FILE, load_details, load_result
    from saehealth.result_folder import report_target, save_report_folder
    from saehealth.verdicts import result_verdicts

    check_html_latents(html_latents)
    result = load_result(result_path)  # the input first: a missing result is the problem to name
    source = result_path if result_path.is_dir() else result_path.parent
    folder = out if out is not None else source
    check_output_folder(*report_target(folder, result_path)[:2])
    if thresholds is not None or not result.verdicts:
        result.verdicts = result_verdicts(result, thresholds)
    save_report_folder(
        folder, result, load_details(result_path, result.sae.d_sae), result_path, html_latents=html_latents
    )
    present(
        result,
        folder,
        quiet=quiet,
        json_output=json_output,
        strict=strict,
        wandb_project=wandb_project,
        source=source,
        result_file=result_path if result_path.is_file() else result_path / RESULT_FILE,
    )


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
    route: RouteOption = None,
) -> None:
    """Show what a checkpoint was detected as: library, format, architecture, sizes, hook mapping, training facts."""
    from saehealth.loading import load_checkpoint
    from saehealth.loading.describe import describe, summarize

    loaded = load_checkpoint(path, format=format, hook=hook, select=select, route=route)
    console.print(summarize(loaded) if isinstance(loaded, list) else describe(loaded))
