"""Command-line usage errors are one line and exit code 1, whatever typer raises them (its vendored click in
typer >= 0.29, click itself before), and --help shows boolean flags as flags."""

from __future__ import annotations

import re

import pytest

from saehealth.cli import USAGE_ERRORS, app, main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "--tokenz", "5"], "No such option.*--tokenz"),
        (["eval"], "Missing option '--sae-path'"),
        (["eval", "--sae-path"], "'--sae-path' requires an argument"),
        (["eval", "--sae-path", "x", "--tokens", "lots"], "'--tokens'"),
        (["eval", "--sae-path", "x", "--tokens", "1e4"], "'--tokens'"),
        (["evaluate"], "No such command 'evaluate'"),
        (["compare", "a", "--seed", "x"], "'--seed'"),
        (["report"], "Missing argument"),
        (["--verbose"], "No such option.*--verbose"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(args, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert re.search(expected, err), err  # click and typer word some errors differently
    command = args[0] if args[0] in {"eval", "compare", "report"} else None
    assert f"See `saehealth{' ' + command if command else ''} --help`." in err


def test_the_installed_typers_usage_errors_are_caught():
    """Whatever typer raises for a usage error is one of the classes main() catches."""
    with pytest.raises(USAGE_ERRORS):
        app(args=["eval", "--tokenz", "5"], prog_name="saehealth", standalone_mode=False)


def test_debug_shows_the_usage_error_as_raised():
    with pytest.raises(USAGE_ERRORS):
        main(["--debug", "eval", "--tokenz", "5"])


@pytest.mark.parametrize("command", ["", "eval", "compare", "demo", "train", "report", "thresholds", "inspect"])
def test_help_shows_boolean_flags_as_flags(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    main([command, "--help"] if command else ["--help"])
    text = capsys.readouterr().out
    assert "--help" in text
    assert not re.search(r"<bool(ean)?>|BOOLEAN", text), text
    if command == "eval":
        assert re.search(r"--force\s+Re-run", text)  # the flag, then its help: no value in between
