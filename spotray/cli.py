"""The `spotray` command: parses, calls the library, renders. Errors are one red line.

Every domain error is a `SpotrayError` with its own exit code (2 for bad input); a
traceback is shown only with `--debug`, and never with local variables (credentials).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spotray.errors import SpotrayError

app = typer.Typer(
    help="Elastic, preemption-safe PyTorch training on AWS spot GPUs, with Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)
_debug = False


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="SPOTRAY_DEBUG", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


@contextlib.contextmanager
def human_errors() -> Iterator[None]:
    """Turn domain errors into one line on stderr and a non-zero exit."""
    try:
        yield
    except SpotrayError as err:
        if _debug:
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
        if _debug:
            err_console.print_exception(show_locals=False)
            raise typer.Exit(1) from None
        err_console.print(
            f"[red]error:[/] {type(err).__name__}: {err} (--debug shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Job config YAML, e.g. train/configs/local.yaml.")],
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="SPOTRAY_ADDRESS",
            help="Ray dashboard address (http://HOST:8265, or 'auto'): submit as a Ray Job and stream "
            "its logs. Without it, Ray starts in this process.",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Stop after this step (default: optimizer.steps). The LR schedule still follows the config, "
            "so a later run goes on along the same trajectory.",
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete this run's checkpoints and start from step 0.")
    ] = False,
) -> None:
    """Train the GPT of CONFIG with Ray Train, resuming from the run's newest checkpoint.

    [b]Examples:[/b]

      spotray train train/configs/local.yaml               # local Ray, CPU, no AWS

      spotray train train/configs/local.yaml --steps 50    # stop at step 50; run again to go on

      spotray train train/configs/p3-8x8.yaml --address auto   # as a Ray Job on the cluster
    """
    with human_errors():
        from spotray.config import load_config

        cfg = load_config(config)
        if address:
            from spotray.jobs import submit

            raise typer.Exit(submit(cfg, address, steps, fresh, console))
        from spotray.trainer import train as run_training

        summary = run_training(cfg, steps, fresh, console, log_to_driver=_debug)
        print_summary(summary)


def print_summary(summary: object) -> None:
    from spotray.trainer import RunSummary

    assert isinstance(summary, RunSummary)
    console.print(
        f"\n[bold green]done[/]: {summary.name} at step {summary.steps}"
        + (f" in {_format_duration(summary.wall_s)}" if summary.wall_s else "")
    )
    rows = [
        ("final loss", f"{summary.final_loss:.4f}"),
        ("restarts", str(summary.restarts)),
        ("resumed from", f"step {summary.resumed_from_step}" if summary.resumed_from_step else "scratch"),
        ("checkpoint", summary.checkpoint_uri or "none"),
    ]
    for key, value in rows:
        console.print(f"  {key:<13}{value}", highlight=False)
    if summary.sample:
        console.print("\n[bold]sample[/] (the model continues 'The '):")
        console.print(summary.sample, markup=False, highlight=False)


def run() -> None:
    """Console-script entry point."""
    app(prog_name="spotray")


if __name__ == "__main__":
    sys.exit(run())
