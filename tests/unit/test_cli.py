"""The command line's conventions, held by every command."""

from __future__ import annotations

from typer.testing import CliRunner

from spotray.cli import app


def test_every_help_states_the_exit_codes() -> None:
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"train", "up", "down", "chaos", "cost", "prices", "plan"} <= set(commands)
    runner = CliRunner()
    for args in ([], *([name] for name in commands)):
        shown = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        assert "Exit codes: 0 done; 1 the environment failed" in shown, args
        assert "2 your input is wrong" in shown, args


def test_a_usage_error_is_input_exit_2() -> None:
    result = CliRunner().invoke(app, ["train", "--no-such-flag"])
    assert result.exit_code == 2
