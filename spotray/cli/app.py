"""The `spotray` Typer app: its options shared by every command and its exit codes."""

from __future__ import annotations

from typing import Annotated

import typer

from spotray.terminal import human_errors, set_debug

# One convention for every command, in every --help.
EXIT_CODES = (
    "Exit codes: 0 done; 1 the environment failed (AWS, Ray, storage, a lost run); "
    "2 your input is wrong (config, arguments); 130 interrupted (run it again to resume)."
)

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
