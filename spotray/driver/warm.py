"""Warm spares: idle worker processes, imports done, waiting on every node for a restart.

Every restart of a worker group (a preemption, a lost node, a growth) starts a new Python
process per worker, and each imports Ray Train, torch and the workload before it trains:
~5 s on two busy cores, the biggest part of a restart. A raylet hands a new actor an idle
worker of the same job and runtime env when it has one, so the driver keeps some there:
on every live node that is not draining, as many as the node can host workers, started
with the workers' exact runtime env. Their setup hook (`spotray.runtime.preload`) does the
imports while the old group still trains; the next group's actors take them and go
straight to the training function.

The driver follows the run's `Started` events: the first carries the runtime env to copy,
and each says on which nodes a group's workers run, each of which took a spare there if
one was left. Spares are topped up right after a start and every few seconds, which warms
a replacement node soon after it joins. A prestart that fails is logged and tried again
at the next top-up: a cold start is slower, never wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotray.config import ScalingSection
from spotray.ray_compat.node import staying
from spotray.runtime import messages as msg

logger = logging.getLogger("spotray.driver")

TOP_UP_EVERY_S = 1.0  # every driver poll: a replacement's spares start within a second of its join

Prestart = Callable[[dict[str, Any], str, str, int], None]


@dataclass
class WarmSpares:
    """A follower of the run's events (`trainer.following`) that keeps the spares."""

    scaling: ScalingSection
    job_id: str  # the driver's Ray job: the Ray Train workers belong to it
    nodes: Callable[[], list[dict[str, Any]]]  # ray.nodes()
    draining: Callable[[], set[str]]  # ids of the nodes being drained
    prestart: Prestart  # spotray.ray_compat.workers.prestart
    runtime_env: str | None = None  # the workers' own, serialized; known from the first start
    spares: dict[str, int] = field(default_factory=dict)  # by node id: started and not taken
    last_top_up: float = 0.0

    def __call__(self, latest: msg.Stepped | None, events: list[msg.Event]) -> None:
        for event in events:
            if isinstance(event, msg.Started):
                self.started(event)
        if self.runtime_env is not None and time.monotonic() - self.last_top_up >= TOP_UP_EVERY_S:
            self.top_up()

    def started(self, event: msg.Started) -> None:
        """A group started: each of its workers took a spare on its node, if one was left."""
        self.runtime_env = event.runtime_env or self.runtime_env
        for node in event.worker_nodes:
            if self.spares.get(node, 0) > 0:
                self.spares[node] -= 1
        self.last_top_up = 0.0  # top up now: the next restart may come soon

    def top_up(self) -> None:
        """Bring every live node that is not draining to as many spares as it can host workers."""
        assert self.runtime_env is not None
        self.last_top_up = time.monotonic()
        for node in staying(self.nodes(), self.draining()):
            node_id = node["NodeID"]
            missing = self.scaling.slots(node.get("Resources", {})) - self.spares.get(node_id, 0)
            if missing <= 0:
                continue
            try:
                self.prestart(node, self.job_id, self.runtime_env, missing)
            except Exception as err:  # a spare is an optimisation: tried again at the next top-up
                logger.warning("could not start warm spares on node %s: %s", node_id[:8], err)
                continue
            self.spares[node_id] = self.spares.get(node_id, 0) + missing
