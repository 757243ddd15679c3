"""Replay a spot availability trace against a job, under the policies a team could choose.

The model, one trace tick at a time (a tick is the trace's `gap_seconds`, 5 min for the
shared traces; capacity is constant within a tick):

- The job needs `steps` optimizer steps. With n workers a step takes `step_s * W / n`
  seconds: the global batch is fixed (gradient accumulation), so throughput is proportional
  to the workers, W being the job's full size.
- Every change of the worker group (start, shrink, grow, a move between spot and on-demand)
  costs `restart_s` seconds of paid nodes and no progress, as a Ray Train restart from the
  newest checkpoint does.
- Losing a node: with spotray (`spotray=True`) the notice turns into a checkpoint, so no
  work is lost; without it the job goes back to its last periodic checkpoint (every
  `checkpoint_every` steps).
- A resize the job chooses (grow, a move between spot and on-demand): spotray asks for a
  checkpoint first and resumes from it (spotray.elastic.recovery); Ray Train
  alone restarts from its last periodic checkpoint.
- Nodes are paid while the job holds them, restarts included; a job waiting for capacity
  holds none. Spot nodes at `spot_price`, on-demand ones at `on_demand_price` ($/h each).

The policies:
- `fixed`: W spot workers or nothing (what a job with a fixed ScalingConfig does);
- `elastic`: whatever spot capacity exists, between min and max workers. It shrinks at once
  (it must) and grows when the time the extra workers save over the rest of the run exceeds
  two restarts (`spotray.elastic.growth`, the rule the live policy applies);
- `fallback`: elastic, and after `fallback_wait_s` below min on spot, min workers on
  demand; back to spot (one restart) as soon as spot reaches min again;
- `on-demand`: W on-demand workers, never preempted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from spotray.elastic.growth import PAYBACK_RESTARTS, growth_pays

POLICIES = ("fixed", "elastic", "fallback", "on-demand")


@dataclass(frozen=True)
class Trace:
    gap_s: float
    available: list[int]

    @classmethod
    def load(cls, path: Path) -> Trace:
        body = json.loads(Path(path).read_text())
        return cls(float(body["metadata"]["gap_seconds"]), [int(n) for n in body["data"]])

    def rotated(self, ticks: int) -> Trace:
        """The same trace started `ticks` later (and wrapped around)."""
        return Trace(self.gap_s, self.available[ticks:] + self.available[:ticks])


@dataclass(frozen=True)
class Job:
    workers: int  # W: the full size
    steps: int
    step_s: float  # seconds per step at W workers
    restart_s: float
    min_workers: int = 1
    checkpoint_every: int = 100  # steps; only matters when work is lost
    spotray: bool = True  # a notice or a chosen resize becomes a checkpoint: no step lost
    fallback_wait_s: float = 1800.0
    spot_price: float = 0.918  # $/h per node
    on_demand_price: float = 3.06


@dataclass
class Result:
    policy: str
    finished: bool
    completion_s: float  # wall time to the last step (or the trace's end)
    steps: float
    spot_node_s: float = 0.0
    on_demand_node_s: float = 0.0
    useful_node_s: float = 0.0  # node-seconds of steps that survive
    timeline: list[tuple[float, int, float, str]] = field(default_factory=list)  # (t, workers, steps, market)

    def spot_usd(self, job: Job) -> float:
        return self.spot_node_s / 3600 * job.spot_price

    def on_demand_usd(self, job: Job) -> float:
        return self.on_demand_node_s / 3600 * job.on_demand_price

    def goodput(self) -> float:
        paid = self.spot_node_s + self.on_demand_node_s
        return self.useful_node_s / paid if paid else 0.0


def _target(policy: str, job: Job, spot: int, current: tuple[str, int] | None, remaining: float,
            starved_s: float) -> tuple[str, int] | None:  # fmt: skip
    """The (market, workers) the policy wants for this tick; None: wait."""
    if policy == "on-demand":
        return ("on-demand", job.workers)
    if policy == "fixed":
        return ("spot", job.workers) if spot >= job.workers else None
    n = min(spot, job.workers)
    if n < job.min_workers:
        on_demand_now = current is not None and current[0] == "on-demand"
        if policy == "fallback" and (starved_s >= job.fallback_wait_s or on_demand_now):
            return ("on-demand", job.min_workers)
        return None
    if current is None or current[0] != "spot" or n < current[1]:
        return ("spot", n)
    if n > current[1]:
        step_s = job.step_s * job.workers / current[1]  # on the current workers
        pays = growth_pays(remaining, step_s, current[1], n, job.restart_s, PAYBACK_RESTARTS)
        return ("spot", n) if pays else current
    return current


def simulate(policy: str, job: Job, trace: Trace) -> Result:
    """Run `job` over `trace` under `policy`; the trace repeats if the job outlasts it."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose from {', '.join(POLICIES)}")
    current: tuple[str, int] | None = None
    steps, checkpoint, restart_left, starved_s, t = 0.0, 0.0, 0.0, 0.0, 0.0
    result = Result(policy, False, 0.0, 0.0)

    def back_to_checkpoint() -> None:
        nonlocal steps
        result.useful_node_s -= (steps - checkpoint) * job.step_s * job.workers
        steps = checkpoint

    for tick in range(4 * len(trace.available)):  # the trace repeats; give up after 4 rounds
        spot = trace.available[tick % len(trace.available)]
        if current and current[0] == "spot" and spot < current[1]:  # nodes taken back
            if job.spotray:
                checkpoint = steps  # the notice became a checkpoint
            else:
                back_to_checkpoint()
            current = None
        want = _target(policy, job, spot, current, job.steps - steps, starved_s)
        starved_s = starved_s + trace.gap_s if spot < job.min_workers else 0.0
        if want != current:
            if current is not None and job.spotray:  # spotray checkpoints, then resizes
                checkpoint = steps
            elif current is not None:  # Ray alone: from the newest periodic checkpoint
                back_to_checkpoint()
            restart_left = job.restart_s if want is not None else 0.0
            current = want
        result.timeline.append((t, current[1] if current else 0, steps, current[0] if current else "none"))
        if current is None:
            t += trace.gap_s
            continue
        market, n = current
        paused = min(restart_left, trace.gap_s)
        restart_left -= paused
        step_time = job.step_s * job.workers / n
        work_s = min(trace.gap_s - paused, (job.steps - steps) * step_time)
        steps += work_s / step_time
        checkpoint = max(checkpoint, (steps // job.checkpoint_every) * job.checkpoint_every)
        if market == "spot":
            result.spot_node_s += (paused + work_s) * n
        else:
            result.on_demand_node_s += (paused + work_s) * n
        result.useful_node_s += work_s * n
        t += paused + work_s
        if steps >= job.steps - 1e-9:
            result.finished, result.completion_s, result.steps = True, t, float(job.steps)
            result.timeline.append((t, n, steps, market))
            return result
    result.completion_s, result.steps = t, steps
    return result
