"""The on-demand fallback: Ray Train's elastic policy, with on-demand nodes after a wait.

Off by default (`scaling.on_demand_after_s`). Without it a job below `min_workers` on spot
waits, and the autoscaler keeps asking for spot nodes. With it:

1. spot capacity for at least `min_workers` workers: run there, as Ray's elastic policy
   does (`FreshElasticPolicy`, which this extends: shrink at once, grow at its checks after
   a checkpoint);
2. below `min_workers` on spot for `on_demand_after_s` seconds: ask the autoscaler for
   `min_workers` on-demand workers (`scaling.on_demand_resources_per_worker`, which only
   cluster.yaml's on-demand GPU type has) and start the job on them as soon as they exist;
   the spot request stays, so spot nodes keep being tried;
3. on on-demand, spot capacity for `min_workers` again: ask the training loop for a
   checkpoint (`FreshElasticPolicy.after_checkpoint`, as a growth does), move the job back
   to spot once it is reported (one restart from it: the few seconds of steps until the
   controller acts, not a checkpoint interval), and drop the on-demand request; the idle
   on-demand nodes go at the autoscaler's idle timeout.

Only `min_workers` run on demand: the fallback is there to keep the run moving, not to
buy speed at on-demand prices. Worker groups are one market or the other, never mixed
(Ray Train's workers share one resource shape).

Why a scaling policy: in Ray Train 2.60 the policy is the one place that decides a worker
group's size *and* its resources (`ResizeDecision.resources_per_worker`), and its
`AutoscalingCoordinator` requests are what make the autoscaler add nodes. A driver that
restarted `fit()` with other resources would have to abort a controller that waits for
capacity, and could not move a running job at a checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import ray
from ray.train.v2.api.config import ScalingConfig

from spotray.elastic.growth import PAYBACK_RESTARTS
from spotray.elastic.recovery import FRESH_EVERY_S, FreshElasticPolicy
from spotray.ray_compat.train import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
    NoopDecision,
    ResizeDecision,
    ScalingDecision,
    TrainAutoscalingCoordinatorClient,
    coordinator_of,
)

# Under ray.train: Ray Train writes these next to its own decisions, in the controller log.
logger = logging.getLogger("ray.train.spotray.elastic.fallback")

Market = Literal["spot", "on-demand"]


@dataclass
class FallbackRule:
    """Which market the next worker group goes to; no Ray in it, so tests can step it."""

    min_workers: int
    after_s: float
    short_since: float | None = None  # when spot capacity last fell below min_workers

    def wants_on_demand(self, spot: int, now: float) -> bool:
        """Whether on-demand nodes should be asked for: spot has been short long enough."""
        if spot >= self.min_workers:
            self.short_since = None
            return False
        if self.short_since is None:
            self.short_since = now
        return now - self.short_since >= self.after_s

    def start(self, spot: int, on_demand: int, now: float) -> tuple[Market, int] | None:
        """The group to start when none runs; None: wait for capacity."""
        if not self.wants_on_demand(spot, now):
            return ("spot", spot) if spot >= self.min_workers else None
        return ("on-demand", self.min_workers) if on_demand >= self.min_workers else None

    def leave_on_demand(self, spot: int, now: float) -> bool:
        """For a group running on demand: True once spot can hold min_workers again."""
        return not self.wants_on_demand(spot, now)


def _count(reserved: dict[str, dict[str, float]], per_worker: dict[str, float], cap: int) -> int:
    """How many on-demand workers the reserved resources hold: Ray's count
    (`_count_possible_workers`, bound to the spot ScalingConfig), for another shape."""
    needs = {k: v for k, v in per_worker.items() if v > 0}
    total = sum(int(min(node.get(k, 0.0) // v for k, v in needs.items())) for node in reserved.values())
    return min(total, cap)


class SpotFallbackPolicy(FreshElasticPolicy):
    """Ray Train's elastic policy over spot nodes, falling back to on-demand ones (module doc)."""

    def __init__(
        self,
        scaling_config: ScalingConfig,
        on_demand_resources: dict[str, float],
        after_s: float,
        payback: float = PAYBACK_RESTARTS,
    ):
        super().__init__(scaling_config, payback)
        spot = scaling_config._resources_per_worker_not_none
        # Same CPU/GPU per worker; the spot marker (e.g. spot_gpu_node) swapped for the on-demand one.
        shape = {k: v for k, v in spot.items() if k in ("CPU", "GPU")}
        self._on_demand_config = replace(
            scaling_config, resources_per_worker={**shape, **on_demand_resources}
        )
        self._rule = FallbackRule(scaling_config.min_workers, after_s)
        self._on_demand_client: TrainAutoscalingCoordinatorClient | None = None
        self._running_on: Market | None = None
        self._on_demand_read_at = float("-inf")
        self._on_demand_seen = 0

    @property
    def _on_demand_resources(self) -> dict[str, float]:
        return self._on_demand_config._resources_per_worker_not_none

    def _spot_workers(self) -> int | None:
        reserved = self.reserved_resources()
        return None if reserved is None else self.possible_workers(reserved)  # Ray's own count

    def _on_demand_workers(self) -> int:
        """On-demand workers the coordinator holds for this job, asking for them first."""
        assert self._on_demand_client is not None
        self._on_demand_client.maybe_send_resource_request(self._on_demand_config, self._rule.min_workers)
        now = time.monotonic()
        if now - self._on_demand_read_at < FRESH_EVERY_S:
            return self._on_demand_seen
        self._on_demand_read_at = now
        coordinator, requester = coordinator_of(self._on_demand_client)
        try:
            # recompute: new on-demand nodes count now, not at the coordinator's next 20 s tick.
            reserved = ray.get(
                coordinator.get_reserved_resources.remote(requester, recompute=True),
                timeout=AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
            )
        except (ray.exceptions.RayError, TimeoutError):  # transient, as Ray's own client treats it
            logger.warning("could not read the on-demand reservation; asking again", exc_info=True)
            return 0
        self._on_demand_seen = _count(reserved, self._on_demand_resources, self._rule.min_workers)
        return self._on_demand_seen

    def _drop_on_demand(self) -> None:
        if self._on_demand_client is not None:
            self._on_demand_client.cancel_resource_request()

    def make_decision_for_non_running_worker_group(self) -> ScalingDecision:
        self.forget_group()
        self._maybe_send_resource_request()  # spot, always
        spot = self._spot_workers()
        if spot is None:
            return NoopDecision()
        now = time.monotonic()
        if not self._rule.wants_on_demand(spot, now):
            self._drop_on_demand()
            decision = super().make_decision_for_non_running_worker_group()
            if isinstance(decision, ResizeDecision):
                self._running_on = "spot"
            return decision
        choice = self._rule.start(spot, self._on_demand_workers(), now)
        if choice is None:
            return NoopDecision()
        market, workers = choice
        logger.info(
            "spot holds %d workers, below min_workers=%d for %.0f s (>= scaling.on_demand_after_s=%.0f): "
            "starting %d workers on on-demand nodes",
            spot, self._rule.min_workers, now - (self._rule.short_since or now), self._rule.after_s, workers,
        )  # fmt: skip
        self._running_on = market
        return ResizeDecision(num_workers=workers, resources_per_worker=self._on_demand_resources)

    def make_decision_for_running_worker_group(
        self, worker_group_state: Any, worker_group_status: Any
    ) -> ScalingDecision:
        if self._running_on != "on-demand":
            return super().make_decision_for_running_worker_group(worker_group_state, worker_group_status)
        self._maybe_send_resource_request()  # keep asking for spot nodes
        self._on_demand_workers()  # keeps the on-demand request from expiring
        spot = self._spot_workers()
        now = time.monotonic()
        if spot is None or not self._rule.leave_on_demand(spot, now):
            self.forget_checkpoint_request()  # spot went again before the move
            return NoopDecision()
        if not self.after_checkpoint(f"spot holds {spot} workers again: back to spot"):
            return NoopDecision()
        logger.info("moving the job back to spot: %d workers", spot)
        self._drop_on_demand()
        self._running_on = "spot"
        return ResizeDecision(
            num_workers=spot, resources_per_worker=self.scaling_config._resources_per_worker_not_none
        )

    def on_controller_start_worker_group(
        self, *, scaling_config: Any, num_workers: int
    ) -> dict[str, str] | None:
        if self._running_on == "on-demand":  # warm nodes are weighed on spot shares
            return None
        return super().on_controller_start_worker_group(
            scaling_config=scaling_config, num_workers=num_workers
        )

    def after_controller_start(self, train_run_context: Any) -> None:
        super().after_controller_start(train_run_context)
        self._on_demand_client = TrainAutoscalingCoordinatorClient(f"{self.requester_id}-on-demand")

    async def before_controller_shutdown(self) -> None:
        await super().before_controller_shutdown()
        self._drop_on_demand()

    def before_controller_abort(self) -> None:
        super().before_controller_abort()
        self._drop_on_demand()
