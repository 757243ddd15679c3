"""Replay spot availability traces for a job under the four policies of spotray.spot.simulator.

    python scripts/simulate_spot.py                                   # the vendored 16-node traces
    python scripts/simulate_spot.py --trace t.json --workers 8 --steps 5000 --plot out.png

For each trace and policy (fixed W, elastic min..max, elastic with on-demand fallback, all
on-demand): completion time, goodput, spot and on-demand dollars, and a PNG of workers and
progress over time. The model and its assumptions are in spotray/spot/simulator.py.

Defaults (GPT-2 124M on 16 x p3.2xlarge, 0.5M tokens per step):
- step 1.1 s at 16 workers: a V100 trains this model at about 30k tokens/s;
- restart 45 s: `spotray train` resuming from a checkpoint on the H100 device, Ray's start,
  CUDA initialisation and the load included (BENCHMARKS.md); on CPU here 19-22 s;
- prices: p3.2xlarge on demand $3.06/h (spotray/cost/on_demand.json); spot $0.918/h, an
  assumed 70% discount (pass --spot-price with `spotray prices` for the real one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotray.spot.simulator import POLICIES, Job, Result, Trace, simulate  # noqa: E402

TRACES = REPO / "data" / "spot-traces" / "availability" / "16-node"  # vendored: data/spot-traces/SOURCE.md


def row(trace: str, runs: list[Result], job: Job, fixed: list[Result]) -> str:
    """One table row: medians over the start times."""

    def total(r: Result) -> float:
        return r.spot_usd(job) + r.on_demand_usd(job)

    med = statistics.median
    hours = med(r.completion_s for r in runs) / 3600
    done = f"{sum(r.finished for r in runs)}/{len(runs)}"
    return (
        f"| {trace} | {runs[0].policy} | {done} | {hours:.1f} | "
        f"{hours / (med(r.completion_s for r in fixed) / 3600):.2f} | {med(r.goodput() for r in runs):.3f} | "
        f"{med(r.spot_usd(job) for r in runs):,.0f} | {med(r.on_demand_usd(job) for r in runs):,.0f} | "
        f"{med(map(total, runs)):,.0f} | {med(map(total, runs)) / med(map(total, fixed)):.2f} |"
    )


def plot(results: dict[str, Result], job: Job, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for policy, r in results.items():
        hours = [t / 3600 for t, *_ in r.timeline]
        top.step(hours, [w for _, w, _, _ in r.timeline], where="post", label=policy, linewidth=1)
        bottom.plot(hours, [100 * s / job.steps for _, _, s, _ in r.timeline], label=policy, linewidth=1)
    top.set_ylabel("workers")
    bottom.set_ylabel("progress (%)")
    bottom.set_xlabel("hours")
    top.set_title(title)
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", type=Path, action="append", help="availability trace JSON (repeat)")
    parser.add_argument("--workers", type=int, default=16, help="W, the job's full size (one per node)")
    parser.add_argument("--min-workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--step-s", type=float, default=1.1, help="seconds per step at W workers")
    parser.add_argument("--restart-s", type=float, default=45.0)
    parser.add_argument("--fallback-wait-s", type=float, default=1800.0)
    parser.add_argument("--spot-price", type=float, default=0.918)
    parser.add_argument("--on-demand-price", type=float, default=3.06)
    parser.add_argument(
        "--starts", type=int, default=8, help="start times spread evenly over each trace; medians reported"
    )
    parser.add_argument("--plot", type=Path, help="PNG path; one per trace, the trace's name appended")
    args = parser.parse_args()

    traces = args.trace or sorted(TRACES.glob("*/*.json"))
    if not traces:
        parser.error(f"no --trace given and no traces under {TRACES}")
    job = Job(
        workers=args.workers,
        steps=args.steps,
        step_s=args.step_s,
        restart_s=args.restart_s,
        min_workers=args.min_workers,
        fallback_wait_s=args.fallback_wait_s,
        spot_price=args.spot_price,
        on_demand_price=args.on_demand_price,
    )
    print(f"job: {job}\n")
    print(
        "| trace | policy | finished | hours | time vs fixed | goodput | spot $ | on-demand $ | total $ "
        "| cost vs fixed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in traces:
        trace = Trace.load(path)
        name = f"{path.parent.name}/{path.stem}"
        n = len(trace.available)
        starts = [trace.rotated(i * n // args.starts) for i in range(args.starts)]
        results = {p: [simulate(p, job, t) for t in starts] for p in POLICIES}
        for runs in results.values():
            print(row(name, runs, job, results["fixed"]), flush=True)
        if args.plot:
            out = args.plot.with_name(f"{args.plot.stem}-{path.stem}{args.plot.suffix}")
            first = {p: runs[0] for p, runs in results.items()}
            plot(first, job, f"{name}: {job.workers} workers, {job.steps} steps", out)
            print(f"  plot: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
