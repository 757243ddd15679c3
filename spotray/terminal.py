"""What every command prints through, and how its errors end: one line, the right exit code.

Every domain error is a `SpotrayError` with its own exit code (2 for bad input, 1 for the
environment); a traceback is shown only with `--debug`, and never with local variables
(credentials).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from spotray.errors import Interrupted, SpotrayError

console = Console()
err_console = Console(stderr=True)
_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debug_on() -> bool:
    """`spotray --debug`: tracebacks on errors, Ray's own logs on the terminal."""
    return _debug


@contextlib.contextmanager
def human_errors() -> Iterator[None]:
    """Turn domain errors into one line on stderr and a non-zero exit."""
    try:
        yield
    except Interrupted as err:
        err_console.print(f"[yellow]interrupted[/]: {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    except SpotrayError as err:
        if debug_on():
            err_console.print_exception(show_locals=False)
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: run the same command again to resume from the last checkpoint"
        )
        raise typer.Exit(130) from None
    except Exception as err:  # the edge of the program: anything unexpected is still one line
        if debug_on():
            err_console.print_exception(show_locals=False)
            raise typer.Exit(1) from None
        err_console.print(
            f"[red]error:[/] {type(err).__name__}: {err} (--debug shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
