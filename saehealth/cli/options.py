"""Options shared by several commands, each declared once with typer `Annotated`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
HookOption = Annotated[
    str | None,
    typer.Option(help="TransformerLens hook (default: the checkpoint's); a routed SAE's hooks comma-separated."),
]
RouteOption = Annotated[
    str | None,
    typer.Option(
        metavar="KEY=VALUE,...",
        help="Routed SAEs: settings the checkpoint lacks or overridden: k, aggregation (sum|mean), routing "
        "(hard|soft), splice (official|rescaled), eps (or none), config (the run's YAML).",
    ),
]
DatasetOption = Annotated[str | None, typer.Option(help="Built-in, local path or hub dataset.")]
SplitOption = Annotated[str | None, typer.Option(help="Dataset split (default: a held-out one).")]
TokensOption = Annotated[int | None, typer.Option("--tokens", help="Tokens to evaluate (default: up to 200k).")]
NumSamplesOption = Annotated[int | None, typer.Option(help="Sequences to evaluate, instead of --tokens.")]
ContextLengthOption = Annotated[int | None, typer.Option(help="Tokens per sequence (default: the checkpoint's).")]
BatchSizeOption = Annotated[int, typer.Option(help="Sequences per batch.")]
DeviceOption = Annotated[
    str, typer.Option(help="auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps.")
]
DtypeOption = Annotated[
    str | None,
    typer.Option(help="float32, bfloat16, float16 (eval's default: the dtype the SAE was trained in, else float32)."),
]
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
AbsorptionMinLettersOption = Annotated[
    int,
    typer.Option(
        "--absorption-min-letters",
        help="Absorption needs this many letters whose probe has F1 > 0.6 (SAEBench's min_feats_for_eval); "
        "a small model may need fewer than 20.",
    ),
]
