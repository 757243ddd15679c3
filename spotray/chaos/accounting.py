"""What a preemption cost: the wall time it added over the job's uninterrupted pace.

Counting the time from a kill to the next step hides every restart after the first: an
announced preemption that restarts the job onto the surviving nodes, then again onto the
replacement, looked as cheap as its first restart. Here an event owns the window from its
start (an announced one: its notice; an unannounced one: the kill; an add: the nodes
joining) to the next event's start or the run's last step, and costs whatever that window
held beyond the time its net progress takes at full pace: every restart in it, the steps
redone from a checkpoint, the steps trained on fewer workers, and training on until the
deadline (which costs nothing when it goes at full pace). A window's net progress is the
furthest step reached by its end less the furthest before it, so steps redone count once.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

Steps = list[tuple[float, int]]  # (time, step) of every step trained, in order


@dataclass(frozen=True)
class GroupStart:
    """A worker group resumed at `step` on `workers` workers, trained from `time` on (its
    model built and checkpoint read); rank 0's process was created at `born` and entered
    the loop at `entered` (0: not known)."""

    time: float
    step: int
    workers: int
    born: float = 0.0
    entered: float = 0.0


@dataclass(frozen=True)
class RestartPhases:
    """Where a restart's seconds went, from the old group's last step to the new one's first."""

    to_new_workers: float  # Ray Train notices, ends the old group, starts new processes
    set_up: float  # the worker's imports, Ray Train's set-up, the process group
    restore: float  # the model built, the checkpoint read
    first_step: float

    @property
    def total(self) -> float:
        return self.to_new_workers + self.set_up + self.restore + self.first_step


@dataclass(frozen=True)
class EventCost:
    seconds_lost: float  # the window's wall time less its net progress at full pace
    restarts: int  # worker groups started in the window
    steps_redone: int  # trained before a restart in the window and trained again after it


def full_pace_s(steps: Steps, starts: list[GroupStart]) -> float:
    """The median step of the job at its full size: from one step to the next of the same
    worker group, a group's first step (which includes its start) left out."""
    full = max(s.workers for s in starts)
    times = [s.time for s in starts]
    gaps = [
        t - t0
        for (t0, s0), (t, s) in itertools.pairwise(steps)
        if s == s0 + 1 and not any(t0 < start <= t for start in times) and _size_at(t0, starts) == full
    ]
    if not gaps:
        raise ValueError("no two consecutive steps of a full-size worker group: no pace to measure")
    return statistics.median(gaps)


def event_costs(
    steps: Steps, starts: list[GroupStart], begins: list[float], step_s: float
) -> list[EventCost]:
    """One cost per event, `begins` being when each began (in order); the last event's
    window ends at the run's last step."""
    end = steps[-1][0] if steps else 0.0
    ends = [*begins[1:], end] if begins else []
    return [
        _cost(steps, starts, begin, max(begin, until), step_s)
        for begin, until in zip(begins, ends, strict=True)
    ]


def _cost(steps: Steps, starts: list[GroupStart], begin: float, end: float, step_s: float) -> EventCost:
    progress = _furthest(steps, end) - _furthest(steps, begin)
    inside = [s for s in starts if begin < s.time <= end]
    redone = sum(max(0, _furthest(steps, s.time) - s.step) for s in inside)
    return EventCost(round((end - begin) - progress * step_s, 2), len(inside), redone)


def _furthest(steps: Steps, at: float) -> int:
    return max((step for t, step in steps if t <= at), default=0)


def _size_at(at: float, starts: list[GroupStart]) -> int:
    before = [s for s in starts if s.time <= at]
    return before[-1].workers if before else 0


def restart_phases(steps: Steps, starts: list[GroupStart]) -> list[RestartPhases]:
    """Each restart taken apart (the first start is not a restart), where the loop said when
    its process was born and entered the loop."""
    phases = []
    for start in starts[1:]:
        around = _around(steps, start)
        if around is None or not around[0] <= start.born <= start.entered <= start.time:
            continue
        last, first = around
        phases.append(
            RestartPhases(
                round(start.born - last, 2),
                round(start.entered - start.born, 2),
                round(start.time - start.entered, 2),
                round(first - start.time, 2),
            )
        )
    return phases


def restart_s(steps: Steps, starts: list[GroupStart]) -> list[float]:
    """Each restart's seconds without progress: from the last step before a worker group
    started (the old group's) to the new group's first step."""
    gaps = [_around(steps, start) for start in starts[1:]]
    return [round(first - last, 2) for last, first in filter(None, gaps)]


def _around(steps: Steps, start: GroupStart) -> tuple[float, float] | None:
    """(the last step's time before `start`, the first one's after it), if there are both."""
    last = max((t for t, _ in steps if t <= start.time), default=None)
    first = min((t for t, _ in steps if t > start.time), default=None)
    return None if last is None or first is None else (last, first)
