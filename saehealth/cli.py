"""The `saehealth` command line.

Every user mistake surfaces as a `SaeHealthError`; `main()` turns it into one red line and exit code 1
(`--debug` shows the traceback instead). Options are declared once, here, with typer `Annotated`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from saehealth.errors import SaeHealthError

app = typer.Typer(
    name="saehealth",
    help="Is your sparse autoencoder any good? Evaluate, report on, compare and train SAEs.",
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, mapping user errors to one line and exit code 1."""
    import click

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="saehealth", standalone_mode=False)
    except SaeHealthError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("[bold red]aborted[/]")
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
