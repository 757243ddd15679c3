"""Elastic jobs: a fresh cluster view before Ray Train re-sizes the job, and growth that pays.

What Ray 2.60 does when a node of an elastic (min..max) job dies, measured with
`spotray chaos` (2 nodes, 1..2 workers, one killed): 81 s from the kill to the first
resumed step, of which 60 s are spent waiting for a worker that cannot exist. The chain:

1. the GCS marks the node dead only after its health check fails
   `health_check_failure_threshold` times, `health_check_period_ms` apart (5 x 3 s: ~16 s);
2. Ray Train's elastic policy sizes the new worker group from Ray Data's
   AutoscalingCoordinator, which re-reads the node table every 20 s (`TICK_INTERVAL_S`);
3. so, seconds after the failure, the policy still counts the dead node's resources, asks
   for 2 workers, and waits out `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) before
   trying again with 1.

spotray fixes the two stale views where they live, with settings and APIs Ray offers:

- `FAST_HEALTH_CHECK` (spotray.elastic.registry): the GCS health-check settings (Ray system
  config) for clusters that spotray starts: a dead node is known in ~3 s instead of ~16 s.
- `FreshClusterView`, a Ray Train `UserCallback`: when workers fail, it waits (a few
  seconds at most) until the GCS has marked a node dead, then asks the coordinator to
  recompute its view (`get_reserved_resources(recompute=True)`, the coordinator's own
  API for callers that must not trust a stale tick), so the policy's next decision sees
  the nodes that exist.
- `FreshElasticPolicy`, Ray's elastic policy with three changes. Each time it reads the
  cluster (every decision while the job waits, every controller poll while it runs) the
  coordinator recomputes first, at most once a second (`FRESH_EVERY_S`), so that
  nodes coming back are seen within seconds, not at the coordinator's next 20 s tick. A
  running job weighs growth as soon as the cluster holds more workers than at its last
  look, not only at Ray's resize check (`resize_check_s`, 60 s by default: a node that
  joined waited 30 s on average, and up to a full interval after each restart). And a
  running job grows only after a checkpoint it asks for: room for more workers becomes a
  checkpoint request (the one a rebalance hint makes), and the new worker group resumes
  from that checkpoint, so a growth costs one restart and no steps redone. Room is only
  taken when growing pays (`spotray.elastic.growth`: the time saved over the rest of the run
  against `scaling.grow_payback_restarts` restarts), on the pace the training loop reports
  with each checkpoint (`ReportClock`).

Both policies also leave draining nodes out of what they count (`_without_draining`): Ray
places nothing new on a node being drained, but the coordinator counts it until it is dead.
Their share moves to a spare node (or the replacement launched at the notice), so that a
preemption restarts the job once, onto the nodes that will stay.

That restart need not wait for the node to go: once the training loop's last checkpoint
before the deadline is registered and the nodes that stay have room, the loop ends its
group (`spotray.runtime.preemption.NodeLeaving`). `PreemptionFailurePolicy` counts that as
the preemption it is (Ray's `max_preemption_failures`, not `max_failures`), and
`FreshClusterView` does not wait for a node death that has not happened yet.

The start timeout is left alone: lowering it would also cut short legitimate slow starts
(cold GPU nodes), and a timed-out start is retried for ever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.train import PreemptionError, PreemptionInfo, UserCallback

from spotray.elastic.growth import PAYBACK_RESTARTS, Pace, growth_pays, saved_s
from spotray.elastic.placement import rooms, selector, warm_nodes
from spotray.ray_compat.node import draining_node_ids, staying_nodes
from spotray.ray_compat.train import (
    ElasticPolicyBase,
    FailurePolicyBase,
    NoopDecision,
    ResizeDecision,
    ScalingDecision,
)
from spotray.runtime.messages import CheckpointReport
from spotray.runtime.preemption import NodeLeaving
from spotray.runtime.preload import ready_spares
from spotray.spot.watch import request_checkpoint

# Under ray.train: Ray Train writes these next to its own decisions, in the controller log.
logger = logging.getLogger("ray.train.spotray.elastic.recovery")

FRESH_EVERY_S = 1.0  # the most often a policy makes the coordinator recompute its view
WAIT_FOR_DEATH_S = 5.0  # longer than FAST_HEALTH_CHECK takes; a plain worker error pays this once
COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # (name, namespace) in Ray 2.60
HEAD_RESOURCE = "node:__internal_head__"  # the head node's resource, as `ray.nodes()` lists it
CHECKPOINT_WAIT_S = 60.0  # a loop that does not answer a checkpoint request still moves, from its last one

# Set by ReportClock, read by the policies, in the controller's process (both live in Ray
# Train's controller actor, which runs one run): the newest checkpoint request that a
# reported checkpoint answered, and the pace reported with the newest checkpoint.
_answered_request = 0.0
_pace: Pace | None = None


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


class FreshClusterView(UserCallback):
    """After a worker failure, make the elastic policy's next look at the cluster a true one."""

    def __init__(self) -> None:
        self._known: set[str] | None = None

    def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
        self._known = alive_nodes()  # the nodes of a healthy, running job

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        if handed_over(worker_exceptions) is not None:  # no node died: the view is fresh already
            return
        known = self._known or alive_nodes()
        deadline = time.monotonic() + WAIT_FOR_DEATH_S
        while not (known - alive_nodes()) and time.monotonic() < deadline:
            time.sleep(0.25)
        lost = known - alive_nodes()
        if _refresh_coordinator() is not None:
            self._known = alive_nodes()
            logger.info("refreshed the cluster view after a failure; nodes lost: %s", sorted(lost) or "none")


def handed_over(worker_exceptions: dict[int, Exception]) -> NodeLeaving | None:
    """The loop's `NodeLeaving`, when that is why the worker group ended."""
    return next((e for e in worker_exceptions.values() if isinstance(e, NodeLeaving)), None)


class PreemptionFailurePolicy(FailurePolicyBase):
    """Ray's failure policy, which takes a worker group the training loop ended ahead of a
    preemption (`NodeLeaving`) for the `PreemptionError` Ray raises when it ends one at the
    deadline: retried against `max_preemption_failures`, not `max_failures`."""

    def make_decision(self, training_failed_error: Any) -> Any:
        leaving = handed_over(getattr(training_failed_error, "worker_failures", None) or {})
        if leaving is not None:
            info = PreemptionInfo(deadline_ms=leaving.deadline_ms, preempted_node_to_ranks=leaving.nodes)
            training_failed_error = PreemptionError(preemption_info=info, drain_timed_out=False)
        return super().make_decision(training_failed_error)


class ReportClock(UserCallback):
    """Notes, from each reported checkpoint, which checkpoint request it answers and the
    training's pace (spotray.runtime.loop reports both), for the policies."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        global _answered_request, _pace
        # With or without a checkpoint: one rewritten in a folder Ray already has is reported
        # by its metrics alone (spotray.runtime.loop).
        reports = [r for r in map(CheckpointReport.from_metrics, metrics) if r is not None]
        answered = [r.answers_request for r in reports if r.answers_request is not None]
        _answered_request = max([_answered_request, *answered])
        if reports:  # rank 0's first: every rank reports the same pace
            _pace = Pace.from_report(reports[0], time.monotonic())


@dataclass
class _Asked:
    request: float  # the request's wall-clock time, as the loop reports it back
    at: float  # monotonic, for CHECKPOINT_WAIT_S


class FreshElasticPolicy(ElasticPolicyBase):
    """Ray Train's elastic policy on a fresh cluster view, growing after a checkpoint it asks
    for (module doc).

    Ray warns that a recompute costs a full tick (one read of the node table), so it runs
    at most every `FRESH_EVERY_S`.
    """

    def __init__(self, scaling_config: Any, payback: float = PAYBACK_RESTARTS) -> None:
        super().__init__(scaling_config)
        self._payback = payback
        self._refreshed_at = float("-inf")
        self._asked: _Asked | None = None
        self._told: tuple[int, int] | None = None  # the growth last logged as not paying
        self._possible_seen = 0  # workers the cluster held at the running group's last look

    def reserved_resources(self) -> Any:
        now = time.monotonic()
        reserved = None
        if now - self._refreshed_at >= FRESH_EVERY_S:
            self._refreshed_at = now
            reserved = _refresh_coordinator(self.requester_id)
            if reserved is not None:
                self.remember_reserved_resources(reserved, now)
        if reserved is None:
            reserved = self.ray_reserved_resources()
        return None if reserved is None else _without_draining(reserved)

    def make_decision_for_non_running_worker_group(self) -> ScalingDecision:
        self.forget_group()
        return super().make_decision_for_non_running_worker_group()

    def on_controller_start_worker_group(
        self, *, scaling_config: Any, num_workers: int
    ) -> dict[str, str] | None:
        """Ray Train's hook before it places a new group: onto the nodes whose warm spares are
        ready, when they can hold it (spotray.elastic.placement)."""
        try:
            reserved = self.reserved_resources() or {}
            room = rooms(reserved, staying_nodes(), self.possible_workers)
            ready = ready_spares(ray.get_runtime_context().get_job_id())
        except Exception:  # a preference, not a condition: Ray places the group as it would
            logger.warning("could not read where warm spares are ready", exc_info=True)
            return None
        nodes = warm_nodes(ready, room, num_workers)
        if nodes is None:
            return None
        cold = sorted(set(room) - set(nodes))
        logger.info(
            "starting %d workers on nodes %s, whose warm spares are ready (not on %s)",
            num_workers, _short(nodes), _short(cold),
        )  # fmt: skip
        return selector(nodes)

    def make_decision_for_running_worker_group(
        self, worker_group_state: Any, worker_group_status: Any
    ) -> ScalingDecision:
        current = worker_group_state.num_workers
        if self._asked is None:
            decision = super().make_decision_for_running_worker_group(worker_group_state, worker_group_status)
            room = decision.num_workers if isinstance(decision, ResizeDecision) else 0
            if 0 < room < current:  # a node is draining: its notice is acted on at the deadline
                return NoopDecision()
            room = max(room, self._capacity_came_back(current))
            if room <= current or not self._growth_pays(current, room):
                return NoopDecision()
            reason = f"room for {room} workers (running {current})"
        else:
            reason = ""
        if not self.after_checkpoint(reason):
            return NoopDecision()
        # Sized now, not when asked: capacity may have changed while the checkpoint was written.
        reserved = self.reserved_resources()
        workers = 0 if reserved is None else self.possible_workers(reserved)
        if workers <= current:
            logger.info("no room to grow any more (%d workers); going on with %d", workers, current)
            return NoopDecision()
        logger.info("growing the worker group %d -> %d workers", current, workers)
        return self.resize_decision(workers)

    def _capacity_came_back(self, current: int) -> int:
        """Between Ray's resize checks: the workers the cluster holds now when that is more
        than at the last look (else 0), so that capacity coming back is weighed at once
        instead of up to `resize_check_s` later (as the fallback's move back to spot is)."""
        reserved = self.reserved_resources()
        possible = 0 if reserved is None else self.possible_workers(reserved)
        came_back = possible > max(current, self._possible_seen)
        self._possible_seen = possible
        return possible if came_back else 0

    def _growth_pays(self, workers: int, new_workers: int) -> bool:
        """spotray.elastic.growth's rule, on the pace the loop reported with its newest checkpoint;
        before any, grow (as Ray does)."""
        pace = _pace
        if pace is None:
            return True
        step_s = pace.step_on(workers)
        left = pace.steps_left_at(time.monotonic(), workers)
        if growth_pays(left, step_s, workers, new_workers, pace.restart_s, self._payback):
            return True
        if self._told == (workers, new_workers):  # said once, not at every resize check
            return False
        self._told = (workers, new_workers)
        logger.info(
            "room for %d workers, staying on %d: %.0f s saved over the %.0f steps left (%.2f s each) "
            "do not pay for %g restarts of %.0f s (scaling.grow_payback_restarts)",
            new_workers, workers, saved_s(left, step_s, workers, new_workers), max(0.0, left), step_s,
            self._payback, pace.restart_s,
        )  # fmt: skip
        return False

    def after_checkpoint(self, reason: str) -> bool:
        """True once the training loop has reported a checkpoint asked for here (or has not
        answered for `CHECKPOINT_WAIT_S`: the move goes on from its last checkpoint); the
        first call asks for it. Call again on every decision until it is True."""
        now = time.monotonic()
        if self._asked is None:
            logger.info("%s: asking the training loop for a checkpoint first", reason)
            self._asked = _Asked(request_checkpoint(reason), now)
            return False
        if _answered_request < self._asked.request and now - self._asked.at < CHECKPOINT_WAIT_S:
            return False
        self._asked = None
        return True

    def forget_group(self) -> None:
        """The running group is gone: what was asked of it, seen or said about it is off."""
        self.forget_checkpoint_request()
        self._told, self._possible_seen = None, 0

    def forget_checkpoint_request(self) -> None:
        """The move that asked for it is off (e.g. capacity went again)."""
        self._asked = None


def _without_draining(reserved: dict[str, Any]) -> dict[str, Any]:
    """The coordinator's per-node reservation with each draining node's share moved to a
    live node that is not draining, where one can hold it.

    Ray places no new work on a draining node, but the coordinator counts every node that
    is alive: an elastic job restarted at a notice's deadline (Ray ends the group then,
    often before AWS has taken the node) was sized on the draining nodes and waited out the
    60 s worker-group start timeout (measured: 71 s from three announced kills to training
    on the node that came back, 10 s once they are left out). Leaving them out is not
    enough: the coordinator reserves only what the job asked for (its max_workers), so a
    draining node in the reservation hid a spare node or the replacement launched at the
    notice, and the job restarted onto fewer workers, then again to grow back (measured:
    21.6 s lost to one announced preemption, two restarts). The share moves to the spare
    nodes in the coordinator's own order (`alive_spare_nodes`)."""
    try:
        draining = draining_node_ids()
    except Exception:  # the GCS busy for a moment: a decision on the full view, not a failed run
        logger.warning("could not read the draining nodes; counting every live node", exc_info=True)
        return reserved
    kept = {node: resources for node, resources in reserved.items() if node not in draining}
    moved = [resources for node, resources in reserved.items() if node in draining]
    if moved:
        spare = alive_spare_nodes(exclude=set(reserved) | draining)
        for share in moved:
            node = next((n for n, total in spare.items() if _fits(share, total)), None)
            if node is not None:
                kept[node] = share
                del spare[node]
    return kept


def alive_spare_nodes(exclude: set[str]) -> dict[str, dict[str, float]]:
    """Live nodes outside `exclude`, with their total resources, in the coordinator's order
    (most GPUs, object store, memory, CPUs first; then node id). A head without CPUs or
    GPUs is left out, as the coordinator leaves it out."""

    def eligible(node: dict[str, Any]) -> bool:
        r = node["Resources"]
        bare_head = HEAD_RESOURCE in r and not (r.get("CPU", 0) or r.get("GPU", 0))
        return node["Alive"] and node["NodeID"] not in exclude and not bare_head

    nodes = [n for n in ray.nodes() if eligible(n)]

    def order(node: dict[str, Any]) -> tuple[Any, ...]:
        r = node["Resources"]
        return (
            -r.get("GPU", 0),
            -r.get("object_store_memory", 0),
            -r.get("memory", 0),
            -r.get("CPU", 0),
            node["NodeID"],
        )

    return {n["NodeID"]: dict(n["Resources"]) for n in sorted(nodes, key=order)}


def _short(nodes: list[str]) -> str:
    return ", ".join(node[:8] for node in nodes)


def _fits(share: dict[str, float], total: dict[str, float]) -> bool:
    return all(total.get(name, 0.0) >= amount for name, amount in share.items())


def _refresh_coordinator(requester: str = "spotray") -> Any:
    """Make the coordinator re-read the node table now; returns what it reserves for
    `requester`, or None where there is no coordinator."""
    try:
        coordinator = ray.get_actor(*COORDINATOR)
        return ray.get(coordinator.get_reserved_resources.remote(requester, recompute=True), timeout=10)
    except (ValueError, ray.exceptions.RayError) as err:  # no coordinator: not an elastic job
        logger.debug("no autoscaling coordinator to refresh: %s", err)
        return None
