"""`spotray chaos`: spot preemptions on a local multi-node Ray cluster, and what each cost.

One machine plays a spot pool: `ray.cluster_utils.Cluster` starts a head and N worker
nodes (real raylets), each node gets its own loopback IMDS (`FakeIMDS`) and its own
`spotray watch` loop, and the job's workers may only run on those nodes (a `spot_node`
resource). A seeded schedule then takes nodes away during training:

- announced: serve a spot notice on the node's IMDS, wait the lead time, kill the node
  (what AWS does, with the two minutes scaled down);
- unannounced: kill the node (what a hardware fault or a missed notice does);
- add: new nodes join (spot capacity is back), and an elastic job grows onto them.

A replacement node joins for each node taken (as the autoscaler would bring one), unless
`replace` is off; then the job shrinks, or, with no node left, waits for an `add`. It joins
when Ray's autoscaler v2 (the one `ray up` starts) would launch it: at the notice for a node
the watcher drained (v2 does not count a draining node: measured with
`scripts/bench_replacement.py`, the replacement is up ~3 s after the drain), after the kill
for a node that just died or whose notice nobody acted on (`--ray-alone`). Each
event is reported: the step when the loop saw the notice, the last checkpoint before the
kill, the step training had reached, the step it resumed from, the steps lost, and the
seconds from the kill (or the added nodes) to the first step of the new worker group. For
an `add` that grows a running job, "reached" is the step the old group got to and "lost"
the steps the growth redoes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray

from spotray.chaos.accounting import (
    GroupStart,
    RestartPhases,
    Steps,
    event_costs,
    full_pace_s,
    restart_phases,
)
from spotray.chaos.imds_server import FakeIMDS
from spotray.elastic.registry import RECOVERIES, Recovery
from spotray.ray_compat.node import hide_node_death_reports, keep_on_loopback
from spotray.runtime import checkpoint
from spotray.runtime import messages as msg
from spotray.spot.imds import IMDSClient
from spotray.spot.watch import NoticePolicy, RayNode, Watcher, request_checkpoint

SPOT_RESOURCE = "spot_node"
WATCH_INTERVAL_S = 0.5


KINDS = ("announced", "unannounced", "add")


@dataclass(frozen=True)
class ChaosEvent:
    """Take `nodes` nodes away (or add them) once training reaches `at_step`."""

    at_step: int
    announced: bool
    nodes: int = 1
    lead_s: float = 10.0  # announced: notice to kill
    add: bool = False  # nodes join instead of going

    @property
    def kind(self) -> str:
        return "add" if self.add else "announced" if self.announced else "unannounced"


def make_schedule(
    seed: int,
    total_steps: int,
    events: int,
    announced_fraction: float = 2 / 3,
    lead_s: float = 10.0,
) -> list[ChaosEvent]:
    """`events` preemptions at seeded steps spread over the middle of the run."""
    rng = random.Random(seed)
    lo, hi = int(total_steps * 0.15), int(total_steps * 0.85)
    span = max(1, (hi - lo) // max(1, events))
    steps = [lo + i * span + rng.randrange(max(1, span // 2)) for i in range(events)]
    return [ChaosEvent(s, rng.random() < announced_fraction, 1, lead_s) for s in steps]


def parse_event(text: str, lead_s: float) -> ChaosEvent:
    """`STEP[:announced|unannounced|add[:NODES]]`, as `spotray chaos --event` takes it."""
    from spotray.errors import ConfigError

    parts = text.split(":")
    try:
        step = int(parts[0])
        kind = parts[1] if len(parts) > 1 else "announced"
        nodes = int(parts[2]) if len(parts) > 2 else 1
        if kind not in KINDS or step < 1 or nodes < 1 or len(parts) > 3:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--event {text!r}: expected STEP[:{'|'.join(KINDS)}[:NODES]]") from None
    return ChaosEvent(step, kind == "announced", nodes, lead_s, add=kind == "add")


@dataclass
class SpotNode:
    """One simulated spot instance: a raylet, its metadata service and its watcher."""

    node: Any  # the node `ray.cluster_utils.Cluster.add_node` returned
    imds: FakeIMDS
    stop: threading.Event
    thread: threading.Thread

    @property
    def node_id(self) -> str:
        return self.node.node_id


class LocalSpotCluster:
    """A head (no spot resource) and spot nodes that can be preempted, on one machine."""

    def __init__(
        self,
        nodes: int,
        cpus_per_node: float = 1.0,
        recovery: Recovery = RECOVERIES["spotray"],
        gpus_per_node: int = 0,
    ) -> None:
        from ray.cluster_utils import Cluster

        self.cpus_per_node = cpus_per_node
        # Fake nodes on one machine see the same GPUs: a 1-GPU node each, one worker per node,
        # gives every worker group a real CUDA device (and the same one after a move).
        self.gpus_per_node = gpus_per_node
        self.watch = recovery.heeds_notices  # Ray alone: notices are served, nobody acts on them
        keep_on_loopback()
        # The head hosts the driver-side actors (controller, hub); the dashboard serves the
        # State API that tells which node each worker is on.
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": True,
                "dashboard_port": None,  # 8265 or the next free one, as ray.init picks it
                "log_to_stderr": False,
                "_system_config": recovery.system_config,
            },
        )
        self.nodes: list[SpotNode] = []
        for _ in range(nodes):
            self.add_node()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self) -> SpotNode:
        node = self.cluster.add_node(
            num_cpus=self.cpus_per_node,
            num_gpus=self.gpus_per_node,
            resources={SPOT_RESOURCE: 1},
            log_to_stderr=False,
        )
        imds = FakeIMDS(instance_id=f"i-{node.node_id[:17]}").start()
        watcher = Watcher(
            IMDSClient(imds.url),
            RayNode(self.cluster.gcs_address, node.node_id),
            NoticePolicy(),
            interval_s=WATCH_INTERVAL_S,
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=watcher.run, args=(stop,), name=f"watch-{node.node_id[:8]}", daemon=True
        )
        if self.watch:
            thread.start()
        spot = SpotNode(node, imds, stop, thread)
        self.nodes.append(spot)
        return spot

    def kill(self, spot: SpotNode) -> None:
        """The instance is gone: no goodbye, no drain beyond what the watcher did."""
        spot.stop.set()
        self.cluster.remove_node(spot.node, allow_graceful=False)
        spot.imds.stop()
        self.nodes.remove(spot)

    def nodes_with_workers(self) -> list[SpotNode]:
        from ray.util.state import list_actors

        busy = {
            a.node_id
            for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        }
        return [n for n in self.nodes if n.node_id in busy]

    def shutdown(self) -> None:
        for spot in self.nodes:
            spot.stop.set()
            spot.imds.stop()
        self.cluster.shutdown()


@dataclass
class EventReport:
    event: ChaosEvent
    nodes: list[str] = field(default_factory=list)
    step_at_notice: int | None = None  # when the training loop saw the notice
    checkpoint_before_kill: int | None = None  # newest checkpoint handed to Ray before the kill
    step_at_kill: int | None = None  # the furthest step trained before the kill (add: the growth)
    resumed_step: int | None = None
    kill_to_resume_s: float | None = None  # kill (add: nodes joined) to the new group's first step
    workers_after: int | None = None  # the new worker group's size
    notice_to_checkpoint_s: float | None = None  # notice served to a checkpoint handed to Ray
    writing_at_notice: bool | None = None  # a checkpoint was still being written when it came
    kill_time: float | None = None
    notice_served: float | None = None  # announced: when the notice went up on the node's IMDS
    began: float | None = None  # the notice, the kill, or the nodes added: its window's start
    # spotray.chaos.accounting: what the event cost over the job's full pace, every restart in it
    seconds_lost: float | None = None
    restarts: int | None = None
    steps_redone: int | None = None

    @property
    def steps_lost(self) -> int | None:
        if self.step_at_kill is None or self.resumed_step is None:
            return None
        return max(0, self.step_at_kill - self.resumed_step)


E = TypeVar("E", bound=msg.Event)


class RunEnded(RuntimeError):
    """The training run ended while the schedule waited for something."""


class Timeline:
    """Everything the hub said, with its own timestamps, for the reports."""

    def __init__(self, hub: Any, alive: Any = lambda: True) -> None:
        self.hub = hub
        self.alive = alive  # whether the run is still going: waiting on a dead run fails fast
        self.events: list[msg.Event] = []
        self.steps: list[tuple[float, int]] = []  # (time, step) of every step event seen

    def refresh(self) -> None:
        latest, events = ray.get(self.hub.poll.remote(len(self.events)))
        self.events.extend(events)
        if latest is not None and (not self.steps or self.steps[-1] != (latest.time, latest.step)):
            self.steps.append((latest.time, latest.step))

    def step(self) -> int:
        return self.steps[-1][1] if self.steps else 0

    def last(self, kind: type[E], before: float = float("inf"), after: float = 0.0) -> E | None:
        found = [e for e in self.events if isinstance(e, kind) and after <= e.time < before]
        return found[-1] if found else None

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"chaos: timed out waiting for {what}")
            if not self.alive():
                raise RunEnded(f"chaos: training ended while waiting for {what}")
            time.sleep(0.05)
            self.refresh()


def run_schedule(
    cluster: LocalSpotCluster,
    timeline: Timeline,
    schedule: list[ChaosEvent],
    seed: int,
    replace: bool,
    run: Any,
    timeout_s: float = 600.0,
    sigterm_grace_s: float = 0.0,
) -> list[EventReport]:
    """Carry out `schedule` against a running job; returns one report per event.

    `sigterm_grace_s`: at an announced kill, the seconds a SIGTERM handler gets to save
    before the node goes (see `run_chaos`); 0: none.
    """
    rng = random.Random(seed + 1)
    reports: list[EventReport] = []
    waiting: EventReport | None = None  # a kill that left no node: the job waits for an add
    for event in schedule:
        report = EventReport(event)
        if waiting is None:
            timeline.wait(lambda e=event: timeline.step() >= e.at_step, timeout_s, f"step {event.at_step}")
        if event.add:
            timeline.refresh()
            last_start = timeline.last(msg.Started)
            size = 0 if waiting or last_start is None else last_start.world_size
            added_at = report.began = time.time()
            report.nodes = [cluster.add_node().node_id for _ in range(event.nodes)]
            # A waiting job starts on them; a running one grows once the policy sees them, if
            # growing pays (spotray.elastic.growth).
            try:
                start = _follow_restart(
                    timeline, report, added_at, timeout_s, lambda e, size=size: e.world_size > size
                )
            except RunEnded:
                if waiting is not None:
                    raise
                report.workers_after = size  # it finished without growing
                reports.append(report)
                continue
            if waiting is None:  # the steps trained past the grown group's checkpoint are redone
                report.step_at_kill = _last_step_before(timeline, start.time)
            else:
                waiting.resumed_step, waiting.workers_after = report.resumed_step, report.workers_after
                waiting.kill_to_resume_s = report.kill_to_resume_s + (added_at - waiting.kill_time)
                waiting = None
            reports.append(report)
            continue
        busy = cluster.nodes_with_workers()
        victims = rng.sample(busy, min(event.nodes, len(busy)))
        report.nodes = [v.node_id for v in victims]
        served = report.began = time.time()
        drained = event.announced and cluster.watch  # the watcher drains at the notice
        if event.announced:
            for victim in victims:
                victim.imds.serve_notice(lead_s=event.lead_s)
            if replace and drained:  # the autoscaler replaces a drained node at once
                for _ in victims:
                    cluster.add_node()
            deadline = served + event.lead_s
            timeline.wait(lambda d=deadline: time.time() >= d, event.lead_s + 5, "the notice's deadline")
            if sigterm_grace_s:  # the instance shuts down: a SIGTERM handler saves what it can
                request_checkpoint("SIGTERM: the instance is shutting down")
                end = time.time() + sigterm_grace_s
                timeline.wait(lambda e=end: time.time() >= e, sigterm_grace_s + 5, "the SIGTERM grace")
        timeline.refresh()
        kill_time = time.time()
        report.kill_time = kill_time
        report.notice_served = served if event.announced else None
        report.step_at_kill = timeline.step()
        notice = timeline.last(msg.Noticed, before=kill_time, after=served)
        report.step_at_notice = notice.step if notice else None
        report.writing_at_notice = notice.writing if notice else None
        newest = checkpoint.latest(run)  # what storage holds at the moment of the kill
        report.checkpoint_before_kill = newest.step if newest else None
        if notice is not None:  # the checkpoint the loop took because of the notice
            saved = [e for e in timeline.events if isinstance(e, msg.Checkpointed) and e.time >= notice.time]
            report.notice_to_checkpoint_s = saved[0].time - served if saved else None
        for victim in victims:
            cluster.kill(victim)
        if replace and not drained:
            for _ in victims:
                cluster.add_node()
        reports.append(report)
        if not cluster.nodes:  # nothing to run on: the job waits for the next `add`
            report.kill_time, waiting = kill_time, report
            continue
        # The loop may end its group ahead of the deadline (spotray.runtime.preemption): the
        # restart then begins after the notice, before the kill.
        start = _follow_restart(timeline, report, served, timeout_s, lambda e: True, kill_time)
        report.step_at_kill = _last_step_before(timeline, start.time) or report.step_at_kill
    if waiting is not None:
        raise RuntimeError("chaos: the schedule took every node and never added one back")
    return reports


def _last_step_before(timeline: Timeline, at: float) -> int | None:
    """The furthest step trained before `at`: the old group's, when `at` is a group's start."""
    return max((s for t, s in timeline.steps if t < at), default=None)


def _follow_restart(
    timeline: Timeline,
    report: EventReport,
    since: float,
    timeout_s: float,
    wanted: Any,
    kill_time: float | None = None,
) -> msg.Started:
    """Wait for the worker group that starts after `since` (and that `wanted` accepts) to train
    its first step; record where it resumed, its size and how long it took from `kill_time`
    (default: `since`; 0 when it trained before the kill). Returns its start event."""
    timeline.wait(
        lambda: any(isinstance(e, msg.Started) and e.time >= since and wanted(e) for e in timeline.events),
        timeout_s,
        "a new worker group",
    )
    start = next(e for e in timeline.events if isinstance(e, msg.Started) and e.time >= since and wanted(e))
    report.resumed_step, report.workers_after = start.step, start.world_size
    timeline.wait(
        lambda: any(t >= start.time and step > start.step for t, step in timeline.steps),
        timeout_s,
        "the new group's first step",
    )
    first = next(t for t, step in timeline.steps if t >= start.time and step > start.step)
    report.kill_to_resume_s = max(0.0, first - (since if kill_time is None else kill_time))
    return start


def account(reports: list[EventReport], steps: Steps, starts: list[GroupStart]) -> None:
    """Each event's seconds lost, restarts and steps redone (spotray.chaos.accounting), at the
    run's own full-size pace; left unset when the run has no such pace to measure."""
    began = [r.began for r in reports]
    if not steps or not starts or any(b is None for b in began):
        return
    try:
        step_s = full_pace_s(steps, starts)
    except ValueError:
        return
    for report, cost in zip(reports, event_costs(steps, starts, began, step_s), strict=True):
        report.seconds_lost = cost.seconds_lost
        report.restarts = cost.restarts
        report.steps_redone = cost.steps_redone


def group_starts(events: list[msg.Event]) -> list[GroupStart]:
    return [
        GroupStart(e.time, e.step, e.world_size, e.born, e.entered)
        for e in events
        if isinstance(e, msg.Started)
    ]


CHAOS_SUFFIX = "-chaos"  # the run chaos trains: never the config's own run


def chaos_config(cfg: Any) -> Any:
    """The job under a run name of its own (`NAME-chaos`, always started fresh, so the
    config's own run is never touched), pinned to the spot nodes: one `spot_node` per
    worker, one worker per node."""
    scaling = cfg.scaling.model_copy(
        update={"resources_per_worker": {**cfg.scaling.resources_per_worker, SPOT_RESOURCE: 1}}
    )
    return cfg.model_copy(update={"name": cfg.name + CHAOS_SUFFIX, "scaling": scaling})


@dataclass(frozen=True)
class ChaosOptions:
    """How `spotray chaos` runs: the cluster, the schedule, and what it reports."""

    schedule: list[ChaosEvent]
    nodes: int = 3
    seed: int = 0
    replace: bool = True  # a new node for each one taken
    report_path: Path | None = None  # the report as JSON, too
    recovery: str = "spotray"  # a name in RECOVERIES; "ray": no watchers, Ray's defaults
    slow_storage_s: float = 0.0  # extra seconds per checkpoint write
    slow_upload_s: float = 0.0  # extra seconds per upload of a rank's checkpoint to storage
    slow_step_s: float = 0.0  # the least a step takes at max_workers
    # At an announced kill: a plain script's SIGTERM handler asks for a checkpoint this many
    # seconds before the node goes (see run_chaos); 0: none.
    sigterm_grace_s: float = 0.0
    # Ray's own reports of the nodes chaos kills (raylet log tails) stay in the nodes' logs.
    quiet: bool = True


def run_chaos(cfg: Any, options: ChaosOptions, console: Any) -> list[EventReport]:
    """Start the local spot cluster, train under the schedule, print the report.

    `sigterm_grace_s` plays the SIGTERM handler of a plain PyTorch script (save, then exit)
    at the end of an announced preemption, for comparisons: the loop is asked for a
    checkpoint and the node is killed that many seconds later. A Ray Train worker runs the
    training function in a thread, where Python cannot install a signal handler, so the
    request goes the way a rebalance hint's does (spotray.spot.watch's checkpoint request).
    """
    import json
    import logging
    from dataclasses import asdict

    from spotray.driver.progress import start_hub
    from spotray.driver.trainer import train
    from spotray.errors import SpotrayError
    from spotray.runtime.storage import run_location

    own = cfg.name
    cfg = chaos_config(cfg)
    console.print(f"chaos: trains the run {cfg.name}, from scratch; the run {own} is not touched")
    schedule, recovery = options.schedule, RECOVERIES[options.recovery]
    console.print(
        f"chaos: {options.nodes} spot nodes, {len(schedule)} event(s): "
        + ", ".join(f"step {e.at_step} {e.kind}" + (f" x{e.nodes}" if e.nodes > 1 else "") for e in schedule)
    )
    # The nodes' workers inherit these from the raylets started below.
    if options.slow_storage_s:
        os.environ[checkpoint.SLOW_WRITE_ENV] = str(options.slow_storage_s)
    if options.slow_upload_s:
        os.environ[checkpoint.SLOW_UPLOAD_ENV] = str(options.slow_upload_s)
    if options.slow_step_s:
        os.environ[checkpoint.SLOW_STEP_ENV] = str(options.slow_step_s)
    cluster = LocalSpotCluster(
        options.nodes,
        cpus_per_node=cfg.scaling.cpus_per_worker,
        recovery=recovery,
        gpus_per_node=1 if cfg.scaling.use_gpu else 0,
    )
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        if options.quiet:
            hide_node_death_reports()
        hub = start_hub(keep_steps=True)  # every step: seconds lost per event
        outcome: dict[str, Any] = {}

        def run_training() -> None:
            try:
                outcome["summary"] = train(
                    cfg,
                    None,
                    True,
                    console,
                    attach=True,
                    hub=hub,
                    progress_every_s=0.0,
                    recovery=recovery,
                )
            except Exception as err:  # reported below
                outcome["error"] = err

        # Nodes come and go from the main thread (Ray's node start-up installs signal
        # handlers); training runs beside it.
        trainer = threading.Thread(target=run_training, name="chaos-train", daemon=True)
        trainer.start()
        try:
            timeline = Timeline(hub, alive=trainer.is_alive)
            reports = run_schedule(
                cluster,
                timeline,
                schedule,
                options.seed,
                options.replace,
                run_location(cfg),
                sigterm_grace_s=options.sigterm_grace_s,
            )
        except (TimeoutError, RuntimeError) as err:
            trainer.join(timeout=5)
            if "error" in outcome:  # training failed first: that is the story
                raise outcome["error"] from None
            raise SpotrayError(str(err)) from None
        trainer.join()
        if "error" in outcome:
            raise outcome["error"]
        summary = outcome["summary"]
        timeline.refresh()
        steps = ray.get(hub.steps.remote())
        starts = group_starts(timeline.events)
        account(reports, steps, starts)
        phases = restart_phases(steps, starts)
    finally:
        ray.shutdown()
        cluster.shutdown()

    if options.report_path is not None:
        body = {
            "final_step": summary.steps,
            "final_loss": summary.final_loss,
            "restarts": summary.restarts,
            "wall_s": summary.wall_s,
            "checkpoint": summary.checkpoint_uri,
            "events": [dict(asdict(r), steps_lost=r.steps_lost) for r in reports],
            # For timelines: every step's (time, step), and what the hub heard (starts,
            # checkpoints with their stall, notices).
            "steps": steps,
            "hub_events": [e.as_json() for e in timeline.events],
            "restart_phases": [asdict(p) for p in phases],
        }
        Path(options.report_path).write_text(json.dumps(body, indent=2))
    print_report(console, summary, reports, phases)
    return reports


def print_report(console: Any, summary: Any, reports: list[EventReport], phases: list[RestartPhases]) -> None:
    """The report's table: one row per event, then each restart taken apart."""
    console.print(
        f"\nchaos done: step {summary.steps}, final loss {summary.final_loss:.4f}, "
        f"{summary.restarts} restart(s), {summary.wall_s:.0f} s"
    )
    console.print(
        f"{'event':<22}{'notice@':>8}{'ckpt':>6}{'kill@':>7}{'resumed':>9}{'lost':>6}"
        f"{'notice->ckpt':>14}{'restarts':>9}{'s lost':>8}{'workers':>8}",
        soft_wrap=True,
    )
    for r in reports:
        kind = f"step {r.event.at_step} {r.event.kind}" + (f" x{r.event.nodes}" if r.event.nodes > 1 else "")
        cells = [r.step_at_notice, r.checkpoint_before_kill, r.step_at_kill, r.resumed_step, r.steps_lost]
        text = [str(c) if c is not None else "-" for c in cells]
        saved = f"{r.notice_to_checkpoint_s:.1f} s" if r.notice_to_checkpoint_s is not None else "-"
        restarts = str(r.restarts) if r.restarts is not None else "-"
        lost_s = f"{r.seconds_lost:.1f}" if r.seconds_lost is not None else "-"
        console.print(
            f"{kind:<22}{text[0]:>8}{text[1]:>6}{text[2]:>7}{text[3]:>9}{text[4]:>6}{saved:>14}"
            f"{restarts:>9}{lost_s:>8}"
            f"{r.workers_after if r.workers_after is not None else '-':>8}",
            soft_wrap=True,
        )
    for n, p in enumerate(phases, 1):
        console.print(
            f"restart {n}: {p.total:.1f} s = {p.to_new_workers:.1f} s to new worker processes, "
            f"{p.set_up:.1f} s set-up (imports, process group), {p.restore:.1f} s model and "
            f"checkpoint, {p.first_step:.1f} s first step",
            soft_wrap=True,
        )
