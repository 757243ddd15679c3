"""The `spotray` Typer app: its options shared by every command and its exit codes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from spotray.terminal import human_errors, set_debug

# One convention for every command, in every --help.
EXIT_CODES = (
    "Exit codes: 0 done; 1 the environment failed (AWS, Ray, storage, a lost run); "
    "2 your input is wrong (config, arguments); 130 interrupted (run it again to resume)."
)

F = TypeVar("F", bound=Callable[..., object])

app = typer.Typer(
    help="Elastic, preemption-safe PyTorch training on AWS spot GPUs, with Ray.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="SPOTRAY_DEBUG", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    set_debug(debug)
    with human_errors():
        from spotray.ray_compat import check_ray_version

        check_ray_version()


def command(fn: F) -> F:
    """Register `fn` as a spotray command, its docstring as the help and the exit codes below.

    Typer's rich mode keeps a docstring's line breaks, so source-wrapped prose printed as
    ragged half lines in an 80-column terminal: each prose paragraph is joined into one line
    for the terminal to wrap. Indented lines (the examples) stay as written.
    """
    fn.__doc__ = "\n\n".join(map(_unwrap, inspect.cleandoc(fn.__doc__ or "").split("\n\n")))
    return app.command(epilog=EXIT_CODES)(fn)


def _unwrap(paragraph: str) -> str:
    lines = paragraph.splitlines()
    return paragraph if any(line.startswith(" ") for line in lines) else " ".join(lines)
