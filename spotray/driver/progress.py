"""Live progress of a run: rank 0 pushes events to a small actor, the driver draws them.

`ray.train.report` is a barrier whose results the controller collects at each poll (every
2 s by default), so it is kept for checkpoints; per-step numbers go to `ProgressHub`, a
zero-CPU actor owned by the driver, with fire-and-forget calls. The hub outlives worker-group
restarts, which also makes it the place that counts them (for the `auto` checkpoint interval
and the summary).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spotray.runtime import messages as msg


@ray.remote(num_cpus=0)
class ProgressHub:
    """Collects what rank 0 says (spotray.runtime.messages): the newest `Stepped`, and every
    other event in order."""

    def __init__(self, keep_steps: bool = False) -> None:
        self.latest_step: msg.Stepped | None = None
        self.events: list[msg.Event] = []
        # (time, step) of every step event, for timelines (`spotray chaos`); off for long runs.
        self.step_log: list[tuple[float, int]] | None = [] if keep_steps else None

    def push(self, event: msg.Event) -> None:
        event.time = time.time()
        if isinstance(event, msg.Stepped):
            self.latest_step = event
            if self.step_log is not None:
                self.step_log.append((event.time, event.step))
        else:
            self.events.append(event)

    def steps(self) -> list[tuple[float, int]]:
        """Every step event's (time, step), when the hub keeps them."""
        return list(self.step_log or [])

    def poll(self, since: int) -> tuple[msg.Stepped | None, list[msg.Event]]:
        """The newest step event and the other events from index `since` on."""
        return self.latest_step, self.events[since:]

    def failure_record(self) -> tuple[int, float]:
        """(restarts so far, node-seconds exposed so far), asked by a starting worker group."""
        starts = [e for e in self.events if isinstance(e, msg.Started)]
        now = time.time()
        exposure = sum(
            e.nodes * ((starts[i + 1].time if i + 1 < len(starts) else now) - e.time)
            for i, e in enumerate(starts)
        )
        return len(starts), exposure


def start_hub(keep_steps: bool = False) -> Any:
    """A hub on this (the driver's) node: a 0-CPU actor could otherwise land on a spot node
    and go down with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ProgressHub.options(scheduling_strategy=here).remote(keep_steps)


@dataclass
class RunState:
    """What the driver knows of the run, folded from the hub's events."""

    total: int
    step: int = 0
    loss: float = float("nan")
    samples_per_s: float = 0.0
    tokens_per_s: float | None = None
    world_size: int = 0
    starts: int = 0
    resumed_from: int | None = None  # where the first worker group really resumed (None: scratch)
    notices: int = 0
    last_checkpoint: msg.Checkpointed | None = None
    stopped: str | None = None  # why the run stopped on its own (msg.Stopped)
    warmup_s: float = 0.0  # runtime.compile: every start's first step, summed
    notes: list[str] = field(default_factory=list)
    started_at: float | None = None  # the first start event's time
    steps_lost: int = 0  # steps trained, then redone after a restart
    lost_s: float = 0.0  # per restart: from the checkpoint it resumed from to the restart
    _checkpoints: dict[int, msg.Checkpointed] = field(default_factory=dict)  # by step
    _last_start: float = 0.0

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def goodput(self, now: float | None = None) -> float:
        """The share of the run's time whose work survived (the bill's definition, per run)."""
        if self.started_at is None:
            return 0.0
        elapsed = (now if now is not None else time.time()) - self.started_at
        return max(0.0, 1 - self.lost_s / elapsed) if elapsed > 0 else 1.0

    def _restarted(self, e: msg.Started) -> None:
        self.steps_lost += max(0, self.step - e.step)
        # A checkpoint from before this driver started: count from the previous start.
        saved = self._checkpoints.get(e.step)
        self.lost_s += max(0.0, e.time - (saved.time if saved else self._last_start))
        if self.last_checkpoint and self.last_checkpoint.step > e.step:
            # Handed to Ray but not resumed from (torn in its upload, say): not saved after all.
            self.last_checkpoint = saved

    def fold(self, latest: msg.Stepped | None, events: list[msg.Event]) -> list[str]:
        """Take in new events; returns lines worth printing."""
        lines = []
        for e in events:
            if isinstance(e, msg.Started):
                lines += self._started(e)
            elif isinstance(e, msg.Checkpointed):
                self.last_checkpoint = self._checkpoints[e.step] = e
            elif isinstance(e, msg.Noticed):
                when = f", deadline in {e.deadline_ms / 1000 - e.time:.0f} s" if e.deadline_ms else ""
                lines.append(
                    f"preemption notice at step {e.step} ({len(e.nodes)} node(s){when}): checkpoint now"
                )
                self.notices += 1
            elif isinstance(e, msg.WarmedUp):
                self.warmup_s += e.seconds
                lines.append(f"compiled: the first step at {e.step} took {e.seconds:.1f} s")
            elif isinstance(e, msg.Holding):
                lines.append(
                    f"checkpointed step {e.step} ahead of the deadline; holding until the node is gone"
                )
            elif isinstance(e, msg.HandingOver):
                lines.append(
                    f"step {e.step} is safe and the nodes that stay have room: restarting on them "
                    f"{e.before_deadline_s:.1f} s before the deadline"
                )
            elif isinstance(e, msg.Stopped):
                self.stopped = e.reason
        if latest is not None:
            self.step, self.loss, self.world_size = latest.step, latest.loss, latest.world_size
            self.samples_per_s, self.tokens_per_s = latest.samples_per_s, latest.tokens_per_s
        return lines

    def _started(self, e: msg.Started) -> list[str]:
        if self.starts:
            self._restarted(e)
        else:
            self.started_at = e.time
        self._last_start = e.time
        self.starts += 1
        self.world_size = e.world_size
        if self.starts == 1:
            self.resumed_from = e.step if e.resumed_from else None
        where = f"from step {e.step}" if e.resumed_from else "from scratch"
        if e.recovered_unregistered:
            where += " (complete in storage, not yet registered by Ray)"
        verb = "started" if self.starts == 1 else f"restart {self.starts - 1}:"
        return [
            *(f"removed unusable checkpoint {r}" for r in e.removed),
            *(f"skipped checkpoint {r}" for r in e.skipped),
            f"{verb} {where} on {e.world_size} worker(s)",
        ]

    def status(self) -> str:
        saved = self.last_checkpoint
        ckpt = f"step {saved.step}" if saved else "none yet"
        pace = (
            f"{self.tokens_per_s:,.0f} tok/s"
            if self.tokens_per_s is not None
            else f"{self.samples_per_s:,.1f} samples/s"
        )
        evaluation = "".join(f"  {k} {v:.4g}" for k, v in (saved.evaluation if saved else {}).items())
        return f"loss {self.loss:.4f}  {pace}  workers {self.world_size}  checkpoint {ckpt}{evaluation}"


class ProgressView:
    """A progress bar on a terminal; a line every `every_s` seconds in logs (Ray Jobs, CI)."""

    def __init__(self, state: RunState, console: Console, every_s: float = 10.0) -> None:
        self.state = state
        self.console = console
        self.live = console.is_terminal and sys.stdout.isatty()
        self.every_s = every_s
        self._last_line = 0.0
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> ProgressView:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("starting Ray Train...", total=self.state.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, latest: msg.Stepped | None, events: list[msg.Event]) -> None:
        for line in self.state.fold(latest, events):
            self.console.print(line)
        if self.state.starts == 0:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.state.step, description=self.state.status())
        elif time.monotonic() - self._last_line >= self.every_s and latest is not None:
            self._last_line = time.monotonic()
            self.console.print(f"step {self.state.step}/{self.state.total}  {self.state.status()}")
