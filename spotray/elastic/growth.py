"""When an elastic job should grow: the rule that the live policy and the simulator share.

Growing from n to n' workers costs a restart (the workers' processes, imports, the
checkpoint load: ~15 s on this repository's CPU machine, ~45 s on an H100) and saves, with
the global batch fixed, `1 - n/n'` of every remaining step's time. Capacity that came back
may go again, so growth must pay for more than the one restart it costs: it is worth it
when the time saved over the rest of the run exceeds `payback` restarts (2 by default;
0 grows whenever there is room, as Ray Train does).
"""

from __future__ import annotations

from dataclasses import dataclass

from spotray.runtime.messages import CheckpointReport

PAYBACK_RESTARTS = 2.0  # the default of scaling.grow_payback_restarts


def growth_pays(
    steps_left: float, step_s: float, workers: int, new_workers: int, restart_s: float, payback: float
) -> bool:
    """Whether `new_workers` save more than `payback` restarts over the `steps_left` steps,
    each taking `step_s` seconds on `workers` workers now."""
    return saved_s(steps_left, step_s, workers, new_workers) > payback * restart_s


def saved_s(steps_left: float, step_s: float, workers: int, new_workers: int) -> float:
    """Seconds `new_workers` save over the rest of the run (the global batch is fixed)."""
    return max(0.0, steps_left) * step_s * (1 - workers / new_workers)


@dataclass(frozen=True)
class Pace:
    """The training's pace, from what the loop reports with each checkpoint."""

    step_s: float  # seconds per step lately, on `world_size` workers
    world_size: int
    steps_left: int
    restart_s: float  # the loop's own last start: worker process created to its first step
    at: float  # monotonic time of the report, in the process that received it

    @classmethod
    def from_report(cls, report: CheckpointReport, at: float) -> Pace:
        return cls(report.step_s, report.world_size, report.steps_left, report.restart_s, at)

    def steps_left_at(self, now: float, workers: int) -> float:
        """The steps left at `now`, going on at this pace on `workers` workers since."""
        return self.steps_left - (now - self.at) / self.step_on(workers)

    def step_on(self, workers: int) -> float:
        """Seconds per step on `workers` workers: the global batch is fixed, so time scales
        as 1/workers."""
        return self.step_s * self.world_size / workers
