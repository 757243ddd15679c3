"""The command line's conventions, held by every command."""

from __future__ import annotations

from itertools import pairwise

from typer.testing import CliRunner

from spotray.cli import app


def command_names() -> list[str]:
    return [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_help_states_the_exit_codes() -> None:
    commands = command_names()
    assert {"train", "up", "down", "chaos", "cost", "prices", "plan"} <= set(commands)
    runner = CliRunner()
    for args in ([], *([name] for name in commands)):
        shown = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        assert "Exit codes: 0 done; 1 the environment failed" in shown, args
        assert "2 your input is wrong" in shown, args


def test_a_usage_error_is_input_exit_2() -> None:
    result = CliRunner().invoke(app, ["train", "--no-such-flag"])
    assert result.exit_code == 2


def test_help_prose_wraps_to_the_terminal_not_to_the_source() -> None:
    """At 80 columns a line of a command's description ends only where the next word would
    not fit: the docstrings' own line breaks once left ragged half lines there."""
    runner = CliRunner()
    for name in command_names():
        shown = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"}).output
        lines = [line.rstrip() for line in shown.split("╭")[0].splitlines()]
        for line, after in pairwise(lines):
            prose = line.startswith(" ") and not line.startswith("   ")  # examples are indented
            if prose and after.strip() and not after.startswith("   "):
                assert len(line) + 1 + len(after.split()[0]) > 76, (name, line, after)
