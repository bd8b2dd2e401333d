"""The entry point: run the app, and turn every way a command can fail into one line and an exit code."""

from __future__ import annotations

import sys
import threading
from typing import NoReturn

import typer

from saehealth.cli.app import app, err_console
from saehealth.errors import SaeHealthError


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
