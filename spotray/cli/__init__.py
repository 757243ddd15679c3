"""The `spotray` command: parses, calls the library, renders. Errors end as one red line
through `spotray.terminal.human_errors`, with the exit codes in every --help."""

# isort: off
# Each module registers its commands on `app`; the order here is the order in --help.
from spotray.cli import train  # noqa: F401
from spotray.cli import cluster  # noqa: F401
from spotray.cli import cost  # noqa: F401

# isort: on
from spotray.cli.app import app


def run() -> None:
    """Console-script entry point."""
    app(prog_name="spotray")
