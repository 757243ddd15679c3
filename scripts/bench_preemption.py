"""The same job under the same preemptions, three ways: a plain script, Ray Train alone, spotray.

    python scripts/bench_preemption.py                  # one run of each, 7-11 minutes on 2 cores
    python scripts/bench_preemption.py --repeats 3 --markdown BENCHMARKS.md \
        --plot docs/preemption-timeline.png
    python scripts/bench_preemption.py --steps 2500     # a longer job, the same preemptions

Each run is `spotray chaos` in its own process: a fresh local Ray cluster of 3 spot nodes
(real raylets, each with a loopback IMDS), a small GPT (2 layers, 64-byte context, 200 steps
unless --steps, 16 sequences per step, seed 7), its steps padded to 0.2 s on 2 workers
(chaos --slow-step-s, a bigger model's pace: the notice's lead then spans 20 steps; 0.4 s on
one), and one schedule for all: at step 40 a spot notice, the node killed 4 s later (AWS's
120 s scaled to the run); at step 110 a node killed without notice (between periodic
checkpoints); at step 150 another notice and kill. A replacement node joins for each node
taken, when Ray's autoscaler v2 would bring one: at the notice where spotray's watcher
drained the node, after the kill otherwise (chaos's module doc). The arms:

- article: what the article this project grew from suggests. Fixed 2 workers, a checkpoint
  every 20 steps (an "epoch" of the small corpus), restarts from the last checkpoint, and a
  SIGTERM handler that saves: when the instance shuts down at the end of the notice, the
  loop is asked for a checkpoint and the node goes 2 s later (chaos --sigterm-grace-s; a
  Ray Train worker runs the training function in a thread, where Python cannot install a
  signal handler, so the request goes the way a rebalance hint's does).
- ray-alone: Ray Train with FailureConfig retries and the same periodic checkpoints, Ray's
  default settings, nobody acting on the notices (chaos --ray-alone).
- spotray: the watchers drain the node on the notice, the loop checkpoints at once and
  holds, the job is elastic (1..2 workers) and the checkpoint interval is `auto`, its prior
  node MTBF (2 h) scaled as the notice's lead is (1/30: 4 minutes).

Measured per run: wall time (the driver's fit()), goodput (the job's steps at the
uninterrupted run's pace / wall time), steps lost per preemption, seconds from each kill to the next trained
step, checkpoint stall (seconds training paused to snapshot), the final step and loss, and
the largest difference of any final weight from an uninterrupted 2-worker run (tolerance
1e-4, tests/integration/conftest.py). Medians over the repeats (the table in BENCHMARKS.md
is from --repeats 3, about 20 minutes). The uninterrupted run comes first, on the same
cluster (`chaos --events 0`), and its goodput is in the table too: what the job's own
start leaves, the most any arm can reach.

`--steps N` lengthens the job and keeps the schedule: the same three preemptions in a job
of N steps. Goodput is a ratio of step seconds to wall seconds, and the starts and
restarts cost seconds, not steps, so it rises with the job's length; the default (40 s of
steps) is what fits four runs in 15 minutes.

Then the three policies are projected to a 24-hour, 8-node p3.8xlarge job with
spotray.spot.simulator over the vendored 16-node availability traces (data/spot-traces),
with the restart seconds measured here: article and ray-alone as a fixed-size job that loses
the work since its last periodic checkpoint (every 30 minutes) at each preemption (a SIGTERM
save of a multi-GB checkpoint does not fit in the seconds an instance has after its shutdown
starts), spotray as an elastic 4..8 job that loses none; next to the all on-demand bill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotray.chaos.accounting import GroupStart, event_costs, full_pace_s, restart_s  # noqa: E402
from spotray.chaos.harness import parse_event  # noqa: E402
from spotray.spot.simulator import Job, Trace, simulate  # noqa: E402

NAME = "bench-preemption"
CONFIG: dict[str, Any] = {
    "name": NAME,
    "seed": 7,
    "workload": {
        "entrypoint": "train.gpt:GPTWorkload",
        "args": {"preset": "tiny", "n_layer": 2, "block_size": 64},
    },
    "optimizer": {
        "global_batch_size": 16,
        "micro_batch_size": 8,
        "steps": 200,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 5,
    },
    "scaling": {"min_workers": 2, "max_workers": 2},
    "checkpoint": {"storage_path": "./runs", "interval": 20, "keep": 10},
    "failure": {"max_failures": 10},
}
SCHEDULE = ["40:announced", "110:unannounced", "150:announced"]
LEAD_S = 4.0  # AWS: 120 s
TIME_SCALE = 120.0 / LEAD_S  # the run's seconds per AWS second, for what is given in time
PRIOR_MTBF_HOURS = 2.0 / TIME_SCALE  # checkpoint.prior_mtbf_hours's default, scaled
LAST_EVENT_STEP = max(parse_event(e, LEAD_S).at_step for e in SCHEDULE)
STEP_S = 0.2  # steps padded to this (chaos --slow-step-s): the lead spans 20 steps
SIGTERM_GRACE_S = 2.0  # from the OS shutdown to the instance gone
ARMS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "article": ({}, ["--ray-alone", "--sigterm-grace-s", str(SIGTERM_GRACE_S)]),
    "ray-alone": ({}, ["--ray-alone"]),
    "spotray": (
        {
            "scaling": {"min_workers": 1},
            "checkpoint": {"interval": "auto", "prior_mtbf_hours": PRIOR_MTBF_HOURS},
        },
        [],
    ),
}
TOLERANCE = 1e-4
TRACES = REPO / "data" / "spot-traces" / "availability" / "16-node"  # vendored: data/spot-traces/SOURCE.md


def merged(update: dict[str, Any]) -> dict[str, Any]:
    return {**CONFIG, **{k: {**CONFIG[k], **v} for k, v in update.items()}}


def final_state(checkpoint: str) -> dict[str, Any]:
    from spotray.runtime import tensors

    return tensors.read_state(Path(checkpoint))


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a["model"][k] - b["model"][k]).abs().max()) for k in b["model"])


def chaos(folder: Path, config: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """One `spotray chaos` run of `config` on a fresh 3-node cluster, steps padded to STEP_S;
    returns its report."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "spotray.cli", "chaos", str(path), "--nodes", "3"]
    cmd += ["--slow-step-s", str(STEP_S), "--report", "report.json", *flags]
    timeout_s = 900 + 3 * STEP_S * config["optimizer"]["steps"]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"{folder.name} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return json.loads((folder / "report.json").read_text())


def reference(workdir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The same job without preemptions, on the same 3-node cluster: the weights the arms
    must match, the job's pace, and the goodput that its own start leaves (the ceiling for
    the arms)."""
    report = chaos(workdir / "reference", config, ["--events", "0"])
    step_s = pace(report)
    return {
        "wall_s": report["wall_s"],
        "step_s": step_s,
        "goodput": goodput(report, step_s),
        "state": final_state(report["checkpoint"]),
    }


def starts_of(report: dict[str, Any]) -> list[GroupStart]:
    return [
        GroupStart(e["time"], e["step"], e["world_size"])
        for e in report["hub_events"]
        if e["kind"] == "start"
    ]


def pace(report: dict[str, Any]) -> float:
    """A run's median step at its full size (spotray.chaos.accounting.full_pace_s)."""
    return full_pace_s([tuple(x) for x in report["steps"]], starts_of(report))


def goodput(report: dict[str, Any], step_s: float) -> float:
    """The time the job's steps take at its full size's pace (`step_s`, the uninterrupted
    run's) over the wall time. Steps redone count once; steps on fewer workers, slower
    (chaos --slow-step-s), count at the full pace: the time the job needed, not the time
    it spent."""
    return min(1.0, report["final_step"] * step_s / report["wall_s"])


def run_arm(arm: str, workdir: Path, ref: dict[str, Any], steps: int) -> dict[str, Any]:
    update, flags = ARMS[arm]
    events = [x for e in SCHEDULE for x in ("--event", e)]
    config = merged({**update, "optimizer": {"steps": steps}})
    report = chaos(workdir / arm, config, [*events, "--lead-s", str(LEAD_S), "--seed", "0", *flags])
    checkpoints = [e for e in report["hub_events"] if e["kind"] == "checkpoint"]
    return {
        "arm": arm,
        "wall_s": report["wall_s"],
        "goodput": goodput(report, ref["step_s"]),
        "lost": [e["steps_lost"] for e in report["events"]],
        "to_step_s": [e["kill_to_resume_s"] for e in report["events"]],
        **seconds_lost(report, ref["step_s"]),
        "phases": report["restart_phases"],
        "stall_s": sum(e["stall_s"] for e in checkpoints),
        "checkpoints": len(checkpoints),
        "final_step": report["final_step"],
        "final_loss": report["final_loss"],
        "max_diff": max_difference(final_state(report["checkpoint"]), ref["state"]),
        "report": report,
    }


def seconds_lost(report: dict[str, Any], step_s: float) -> dict[str, Any]:
    """Each event's seconds lost at the uninterrupted run's pace, and the restarts in it
    (spotray.chaos.accounting); and each restart's own seconds, for "one restart"."""
    steps, starts = [tuple(x) for x in report["steps"]], starts_of(report)
    costs = event_costs(steps, starts, [e["began"] for e in report["events"]], step_s)
    return {
        "lost_s": [c.seconds_lost for c in costs],
        "restarts": [c.restarts for c in costs],
        "restart_s": restart_s(steps, starts),
    }


def med(values: list[float]) -> float:
    return statistics.median(values)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    announced = [i for i, e in enumerate(SCHEDULE) if e.endswith(":announced")]
    return {
        "wall_s": med([r["wall_s"] for r in runs]),
        "goodput": med([r["goodput"] for r in runs]),
        "lost": [med([r["lost"][i] for r in runs]) for i in range(len(SCHEDULE))],
        "lost_announced": med([sum(r["lost"][i] for i in announced) for r in runs]),
        "to_step_s": [med([r["to_step_s"][i] for r in runs]) for i in range(len(SCHEDULE))],
        "lost_s": [med([r["lost_s"][i] for r in runs]) for i in range(len(SCHEDULE))],
        "restarts": [med([r["restarts"][i] for r in runs]) for i in range(len(SCHEDULE))],
        "restart_s": med([x for r in runs for x in r["restart_s"]] or [0.0]),
        "phases": {
            name: med([p[name] for r in runs for p in r["phases"]] or [0.0])
            for name in ("to_new_workers", "set_up", "restore", "first_step")
        },
        "stall_s": med([r["stall_s"] for r in runs]),
        "final_step": {r["final_step"] for r in runs},
        "final_loss": med([r["final_loss"] for r in runs]),
        "max_diff": max(r["max_diff"] for r in runs),
    }


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Step against time for one run of each arm, with the preemptions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"article": "tab:orange", "ray-alone": "tab:blue", "spotray": "tab:green"}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for arm, run in runs.items():
        report = run["report"]
        t0 = min(e["time"] for e in report["hub_events"] if e["kind"] == "start")
        ts = [t - t0 for t, _ in report["steps"]]
        ax.plot(ts, [s for _, s in report["steps"]], ".", markersize=2, color=colors[arm], label=arm)
        for e in report["events"]:
            ax.axvline(e["kill_time"] - t0, color=colors[arm], linestyle="--", linewidth=0.8, alpha=0.7)
        for start in starts_of(report)[1:]:  # each restart: where the new worker group resumed
            ax.plot([start.time - t0], [start.step], "v", color=colors[arm], markersize=6)
            if e["notice_served"]:
                ax.axvline(
                    e["notice_served"] - t0, color=colors[arm], linestyle=":", linewidth=0.8, alpha=0.7
                )
    ax.set_xlabel("seconds since the first worker group started")
    ax.set_ylabel("step")
    ax.set_title(
        "Same job, same preemptions (dotted: spot notice, dashed: node killed, triangle: restart; "
        + ", ".join(SCHEDULE)
        + ")",
        fontsize=9,
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def project(summary: dict[str, dict[str, Any]], spot_price: float, on_demand_price: float) -> list[str]:
    """The three policies on a 24 h, 8-node job over the vendored traces (medians over start times)."""
    step_s, steps, every = 1.0, 24 * 3600, 1800
    arms = {
        "article": ("fixed", False),
        "ray-alone": ("fixed", False),
        "spotray": ("elastic", True),
    }
    rows = []
    traces = sorted(TRACES.glob("*/*.json"))
    for trace_path in traces:
        trace = Trace.load(trace_path)
        starts = [trace.rotated(i * len(trace.available) // 8) for i in range(8)]
        measured = [(arm, how) for arm, how in arms.items() if arm in summary]
        for arm, (policy, with_spotray) in [*measured, ("on-demand", ("on-demand", True))]:
            # A preemption's restart cost: one restart's seconds times the restarts it caused
            # (steps redone are the simulator's own, from the checkpoint interval).
            restart = (
                summary[arm]["restart_s"] * max(1.0, med(summary[arm]["restarts"])) if arm in summary else 0.0
            )
            job = Job(
                workers=8,
                min_workers=4,
                steps=steps,
                step_s=step_s,
                restart_s=restart,
                checkpoint_every=every,
                spotray=with_spotray,
                spot_price=spot_price,
                on_demand_price=on_demand_price,
            )
            results = [simulate(policy, job, t) for t in starts]
            hours = med([r.completion_s for r in results]) / 3600
            spot = med([r.spot_usd(job) for r in results])
            demand = med([r.on_demand_usd(job) for r in results])
            total = med([r.spot_usd(job) + r.on_demand_usd(job) for r in results])
            done = sum(r.finished for r in results)
            rows.append(
                f"| {trace_path.parent.name}/{trace_path.stem} | {arm} | {done}/{len(results)} | "
                f"{hours:.1f} | "
                f"{med([r.goodput() for r in results]):.3f} | {spot:,.0f} | {demand:,.0f} | {total:,.0f} |"
            )
    return rows


def spotray_goals(summary: dict[str, dict[str, Any]], ref: dict[str, Any]) -> str:
    """The goals for spotray's arm, against the uninterrupted run and the other arms."""
    spot = summary["spotray"]
    others = [f"{s['wall_s']:.0f} s ({arm})" for arm, s in summary.items() if arm != "spotray"]
    announced = [i for i, e in enumerate(SCHEDULE) if e.endswith(":announced")]
    worst = max(spot["lost_s"][i] for i in announced)
    ratio = spot["goodput"] / ref["goodput"]
    return (
        f"spotray: goodput {spot['goodput']:.3f}, {ratio:.2f} of the uninterrupted run's "
        f"{ref['goodput']:.3f} (goal >= 0.8: {'met' if ratio >= 0.8 else 'not met'}); "
        f"seconds lost per announced preemption at most {worst:.1f} against one restart's "
        f"{spot['restart_s']:.1f} s (goal: no more than one restart: "
        f"{'met' if worst <= spot['restart_s'] else 'not met'}); "
        f"{spot['lost_announced']:g} steps lost to announced preemptions (goal 0), "
        f"wall {spot['wall_s']:.0f} s"
        + (f" against {' and '.join(others)}" if others else "")
        + f"; final weights within {spot['max_diff']:.1e} of the uninterrupted run (tolerance {TOLERANCE:g}: "
        f"{'holds' if spot['max_diff'] <= TOLERANCE else 'does not hold'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each arm; medians reported")
    parser.add_argument("--markdown", type=Path, help="append the results as a section to this file")
    parser.add_argument("--plot", type=Path, help="PNG timeline of the first repeat")
    parser.add_argument(
        "--steps",
        type=int,
        default=CONFIG["optimizer"]["steps"],
        help="the job's length in steps (0.2 s each), the preemptions unchanged; "
        f"must exceed {LAST_EVENT_STEP}",
    )
    parser.add_argument(
        "--arm", choices=list(ARMS), action="append", help="only these arms (repeatable); default: all"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep each run's config, report and checkpoints here (default: temp)"
    )
    parser.add_argument("--on-demand-price", type=float, default=12.24, help="p3.8xlarge $/h (bundled table)")
    parser.add_argument("--spot-price", type=float, default=3.672, help="$/h; default: 70%% below on demand")
    args = parser.parse_args()
    if args.steps <= LAST_EVENT_STEP:
        parser.error(f"--steps must exceed the schedule's last event, step {LAST_EVENT_STEP}")

    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS if arm in (args.arm or ARMS)}
    with tempfile.TemporaryDirectory(prefix="bench-preemption-") as tmp:
        workdir = args.workdir or Path(tmp)
        print("reference: the same job without preemptions ...", end=" ", flush=True)
        ref = reference(workdir, merged({"optimizer": {"steps": args.steps}}))
        print(f"wall {ref['wall_s']:.0f} s, goodput {ref['goodput']:.2f}", flush=True)
        for r in range(args.repeats):
            for arm in results:
                print(f"repeat {r + 1}/{args.repeats} {arm:<10} ...", end=" ", flush=True)
                run = run_arm(arm, workdir / f"r{r}", ref, args.steps)
                results[arm].append(run)
                print(
                    f"wall {run['wall_s']:.0f} s, goodput {run['goodput']:.2f}, lost {run['lost']}, "
                    f"seconds lost {run['lost_s']}, restarts {run['restarts']}, "
                    f"final step {run['final_step']}, "
                    f"max |dw| {run['max_diff']:.1e}  ({(time.time() - started) / 60:.1f} min so far)",
                    flush=True,
                )
    summary = {arm: summarize(runs) for arm, runs in results.items()}
    table = [
        "| arm | wall s | goodput | steps lost (40 ann., 110 unann., 150 ann.) | seconds lost (restarts) | "
        "checkpoint stall s | final step | final loss | max \\|w - uninterrupted\\| |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| uninterrupted (1 run) | {ref['wall_s']:.0f} | {ref['goodput']:.3f} | - | - | - | - | - | - |",
    ]
    for arm, s in summary.items():
        table.append(
            f"| {arm} | {s['wall_s']:.0f} | {s['goodput']:.3f} | {' / '.join(f'{x:g}' for x in s['lost'])} | "
            f"{' / '.join(f'{x:.1f} ({r:g})' for x, r in zip(s['lost_s'], s['restarts'], strict=True))} | "
            f"{s['stall_s']:.2f} | "
            f"{'/'.join(map(str, sorted(s['final_step'])))} | {s['final_loss']:.4f} | {s['max_diff']:.1e} |"
        )
    projection = [
        "| trace | policy | finished | hours | goodput | spot $ | on-demand $ | total $ |",
        "|---|---|---|---|---|---|---|---|",
        *project(summary, args.spot_price, args.on_demand_price),
    ]
    goals = spotray_goals(summary, ref) if "spotray" in summary else "spotray: not run"
    phases = [
        f"- {arm}: "
        + ", ".join(f"{name.replace('_', ' ')} {value:.1f} s" for name, value in s["phases"].items())
        for arm, s in summary.items()
    ]
    print("\n" + "\n".join(table) + "\n\n" + goals + "\n\nRestart phases (medians):\n" + "\n".join(phases))
    print("\n" + "\n".join(projection))
    if args.plot:
        plot({arm: runs[0] for arm, runs in results.items()}, args.plot)
        print(f"timeline: {args.plot}")
    if args.markdown:
        command = "python scripts/bench_preemption.py " + " ".join(sys.argv[1:])
        machine = f"{platform.node()}, {os.cpu_count()} cores"
        section = [
            f"\n### Head to head, {time.strftime('%Y-%m-%d')} ({machine})",
            "",
            f"`{command.strip()}`: {args.steps} steps, "
            f"{'one run' if args.repeats == 1 else f'medians of {args.repeats} runs'} per arm, "
            f"whole script {(time.time() - started) / 60:.1f} min.",
            "",
            *table,
            "",
            goals + ".",
            "",
            "Each restart taken apart (medians over every restart of the arm): to new worker processes "
            "(Ray Train notices, ends the old group, starts new ones), set-up (imports, Ray Train, the "
            "process group), restore (model and checkpoint), first step:",
            "",
            *phases,
            "",
            f"Projected to 24 h of 8 x p3.8xlarge (on demand ${args.on_demand_price}/h, "
            f"spot ${args.spot_price}/h), "
            "restart seconds as measured above, medians over 8 start times per trace:",
            "",
            *projection,
            "",
        ]
        with args.markdown.open("a") as out:
            out.write("\n".join(section))
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
