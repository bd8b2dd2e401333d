"""The typer application every command registers on, and the consoles they print to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console


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
