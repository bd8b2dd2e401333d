"""The `saehealth` command line.

Every user mistake surfaces as a `SaeHealthError`; `main()` turns it into one red line and exit code 1
(`--debug` shows the traceback instead). Options shared by several commands are declared once, in
`options.py`, with typer `Annotated`. Modules: `app` (the typer app and consoles), `evaluate` (eval, compare,
demo), `tools` (train, report, latents, thresholds, inspect), `present` (what they print), `main` (errors and
exit codes).
"""

from saehealth.cli import evaluate, tools  # noqa: F401  (importing registers the commands)
from saehealth.cli.app import app
from saehealth.cli.main import USAGE_ERRORS, main

__all__ = ["USAGE_ERRORS", "app", "main"]
