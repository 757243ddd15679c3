"""`spotray train` and `spotray chaos`: parse, run the job, render its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spotray.cli.app import command
from spotray.errors import ConfigError
from spotray.terminal import console, debug_on, human_errors


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


@command
def train(
    config: Annotated[Path, typer.Argument(help="Job config YAML, e.g. train/configs/local.yaml.")],
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            envvar="SPOTRAY_ADDRESS",
            help="Ray dashboard address (http://HOST:8265, 'auto', or 'local' for `spotray up --local`'s): "
            "submit as a Ray Job and stream "
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
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="With --address: send the Ray token over plain http to a host other than this one.",
        ),
    ] = False,
) -> None:
    """Train CONFIG's workload with Ray Train, resuming from the run's newest checkpoint.

    The workload (`workload.entrypoint: pkg.module:Class`, a spotray.Workload) is imported
    from the current directory and checked on the CPU (one loss on two samples) before Ray
    starts. Exit codes: 2 for a problem in the config or the workload, 1 otherwise, 130 on
    Ctrl-C.

    [b]Examples:[/b]

      spotray train train/configs/local.yaml             # local Ray, CPU, no AWS

      spotray train train/configs/local.yaml --steps 50  # stop at step 50

      spotray train train/configs/p3-8x8.yaml --address auto   # as a Ray Job
    """
    with human_errors():
        from spotray.config import load_config

        cfg = load_config(config)
        if address:
            from spotray.driver.submit import submit

            raise typer.Exit(submit(cfg, address, steps, fresh, console, insecure, ray_logs=debug_on()))
        from spotray.driver.trainer import train as run_training

        summary = run_training(cfg, steps, fresh, console, log_to_driver=debug_on())
        print_summary(summary)


@command
def chaos(
    config: Annotated[Path, typer.Argument(help="Job config YAML to train under preemptions.")],
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Spot nodes in the local cluster.")] = 3,
    events: Annotated[int, typer.Option("--events", min=0, help="Preemptions to inject.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the preemption schedule.")] = 0,
    lead: Annotated[
        float, typer.Option("--lead-s", min=1.0, help="Notice to kill, announced events (AWS: 120 s).")
    ] = 10.0,
    announced: Annotated[
        float, typer.Option("--announced", min=0.0, max=1.0, help="Share of events that are announced.")
    ] = 2 / 3,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace/--no-replace",
            help="A new node for each node taken: at the notice when the watcher drained it (Ray's "
            "autoscaler v2 replaces a draining node at once), after the kill otherwise.",
        ),
    ] = True,
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="An exact event instead of the seeded schedule: STEP[:announced|unannounced[:NODES]]. "
            "Repeat for several.",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON to this file.")
    ] = None,
    ray_alone: Annotated[
        bool,
        typer.Option(
            "--ray-alone",
            help="For comparison: no watchers (notices go unheeded) and Ray's default settings, "
            "i.e. Ray Train alone with periodic checkpoints.",
        ),
    ] = False,
    slow_storage: Annotated[
        float,
        typer.Option(
            "--slow-storage-s",
            min=0.0,
            help="Make every checkpoint write take this many seconds longer (a slow disk), "
            "so that notices arrive while a checkpoint is being written.",
        ),
    ] = 0.0,
    slow_upload: Annotated[
        float,
        typer.Option(
            "--slow-upload-s",
            min=0.0,
            help="Make every upload of a checkpoint to the run's storage take this many seconds "
            "longer (a slow bucket): the last checkpoint before a notice's deadline must be "
            "started early enough to be uploaded in time.",
        ),
    ] = 0.0,
    slow_step: Annotated[
        float,
        typer.Option(
            "--slow-step-s",
            min=0.0,
            help="Make every step take at least this many seconds on the job's full size "
            "(max_workers), and full/workers times that on fewer, as a bigger model with a fixed "
            "global batch would, so that nodes added mid-run find the job still training.",
        ),
    ] = 0.0,
    sigterm_grace: Annotated[
        float,
        typer.Option(
            "--sigterm-grace-s",
            min=0.0,
            help="At each announced kill, ask the loop for a checkpoint this many seconds before "
            "the node goes: a plain script's SIGTERM handler, for comparisons (with --ray-alone).",
        ),
    ] = 0.0,
) -> None:
    """Train CONFIG on a local multi-node Ray cluster while spot preemptions happen to it.

    Each node has its own loopback metadata service and watcher; a seeded schedule serves
    notices and kills nodes, and the report says what each preemption cost. It trains a run
    of its own, NAME-chaos, always from scratch: the config's run NAME is never touched.

    [b]Examples:[/b]

      spotray chaos train/configs/local.yaml --nodes 3 --events 3 --seed 1

      spotray chaos train/configs/local.yaml --event 60:announced \\
        --event 150:unannounced

      spotray chaos CONFIG --no-replace --event 40:unannounced \\
        --event 80:announced --event 80:add:2
    """
    with human_errors():
        from spotray.chaos.harness import ChaosOptions, make_schedule, parse_event, run_chaos
        from spotray.config import load_config

        cfg = load_config(config)
        if cfg.scaling.min_workers > nodes:
            raise ConfigError(f"scaling.min_workers ({cfg.scaling.min_workers}) exceeds --nodes ({nodes})")
        if event:
            schedule = [parse_event(text, lead) for text in event]
        else:
            schedule = make_schedule(seed, cfg.optimizer.steps, events, announced, lead)
        options = ChaosOptions(
            schedule=schedule,
            nodes=nodes,
            seed=seed,
            replace=replace,
            report_path=report,
            recovery="ray" if ray_alone else "spotray",
            slow_storage_s=slow_storage,
            slow_upload_s=slow_upload,
            slow_step_s=slow_step,
            sigterm_grace_s=sigterm_grace,
            quiet=not debug_on(),
        )
        run_chaos(cfg, options, console)


def print_summary(summary: object) -> None:
    from spotray.driver.trainer import RunSummary

    assert isinstance(summary, RunSummary)
    console.print(
        f"\n[bold green]done[/]: {summary.name} at step {summary.steps}"
        + (f" in {_format_duration(summary.wall_s)}" if summary.wall_s else "")
    )
    rows = [
        ("final loss", f"{summary.final_loss:.4f}"),
        ("restarts", str(summary.restarts)),
        ("notices", str(summary.notices)),
        ("resumed from", f"step {summary.resumed_from_step}" if summary.resumed_from_step else "scratch"),
        ("checkpoint", summary.checkpoint_uri or "none"),
        *([("compile", f"{summary.warmup_s:.1f} s of warm-up (first steps)")] if summary.warmup_s else []),
    ]
    for key, value in rows:
        console.print(f"  {key:<13}{value}", highlight=False)
    for key, value in summary.evaluation.items():
        console.print(f"  {key:<13}{value:.4g}", highlight=False)
    if summary.preview:
        console.print("\n[bold]preview[/]", end=" ")
        console.print(summary.preview, markup=False, highlight=False)
