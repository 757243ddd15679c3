"""Faster restarts after a lost node: a fresh cluster view before Ray Train re-sizes the job.

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

- `FAST_HEALTH_CHECK`: the GCS health-check settings (Ray system config) for clusters that
  spotray starts: a dead node is known in ~3 s instead of ~16 s.
- `FreshClusterView`, a Ray Train `UserCallback`: when workers fail, it waits (a few
  seconds at most) until the GCS has marked a node dead, then asks the coordinator to
  recompute its view (`get_reserved_resources(recompute=True)`, the coordinator's own
  API for callers that must not trust a stale tick), so the policy's next decision sees
  the nodes that exist. The same on the way up: at a report (a checkpoint) that finds
  nodes that were not there at the last one, so the resize check
  (`scaling.resize_check_s`) sees new capacity without waiting out the 20 s tick, and the
  job grows right after a checkpoint.
- `FreshElasticPolicy`, Ray's elastic policy with that same recompute before each decision
  while the job waits for capacity (at most every 2 s), so that nodes coming back after
  every node was lost are seen within seconds, not at the coordinator's next 20 s tick.

The start timeout is left alone: lowering it would also cut short legitimate slow starts
(cold GPU nodes), and a timed-out start is retried for ever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.train import UserCallback
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy

logger = logging.getLogger("spotray.recovery")

# Ray system config for the head node of clusters spotray starts (chaos, cluster.local.yaml).
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
FRESH_EVERY_S = 2.0  # the most often a policy makes the coordinator recompute its view
WAIT_FOR_DEATH_S = 5.0  # longer than FAST_HEALTH_CHECK takes; a plain worker error pays this once
COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # (name, namespace) in Ray 2.60


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


class FreshClusterView(UserCallback):
    """After a worker failure, make the elastic policy's next look at the cluster a true one."""

    def __init__(self) -> None:
        self._known: set[str] | None = None

    def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
        now = alive_nodes()  # the nodes of a healthy, running job
        if self._known is not None and now - self._known:  # capacity came back: let it be seen
            _refresh_coordinator()
        self._known = now

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        known = self._known or alive_nodes()
        deadline = time.monotonic() + WAIT_FOR_DEATH_S
        while not (known - alive_nodes()) and time.monotonic() < deadline:
            time.sleep(0.25)
        lost = known - alive_nodes()
        if _refresh_coordinator():
            self._known = alive_nodes()
            logger.info("refreshed the cluster view after a failure; nodes lost: %s", sorted(lost) or "none")


class FreshElasticPolicy(ElasticScalingPolicy):
    """Ray Train's elastic policy, deciding on the cluster as it is now while a job waits
    (module doc).

    Before a decision for a group that is not running, the coordinator recomputes its view,
    at most every `FRESH_EVERY_S`: Ray warns that a recompute costs a full tick (one read of
    the node table), and a waiting job decides every second. A running job is left to Ray's
    resize check and `FreshClusterView`, so that it grows right after a checkpoint, not
    at a moment that throws away the steps since the last one.
    """

    def __init__(self, scaling_config: Any) -> None:
        super().__init__(scaling_config)
        self._refreshed_at = float("-inf")

    def refresh_view(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at >= FRESH_EVERY_S:
            self._refreshed_at = now
            _refresh_coordinator(self._requester_id)

    def make_decision_for_non_running_worker_group(self) -> Any:
        self.refresh_view()
        return super().make_decision_for_non_running_worker_group()


def _refresh_coordinator(requester: str = "spotray") -> bool:
    """Make the coordinator re-read the node table now; False where there is none."""
    try:
        coordinator = ray.get_actor(*COORDINATOR)
        ray.get(coordinator.get_reserved_resources.remote(requester, recompute=True), timeout=10)
    except (ValueError, ray.exceptions.RayError) as err:  # no coordinator: not an elastic job
        logger.debug("no autoscaling coordinator to refresh: %s", err)
        return False
    return True
