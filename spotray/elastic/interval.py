"""How often to checkpoint: a fixed number of steps, or Young/Daly from what was measured.

Young's rule (Daly's first-order form) puts the interval that minimises expected waste at
sqrt(2 * C * M), where C is what one checkpoint costs the training and M is the job's mean
time between failures. spotray measures C as the seconds the training thread is stalled by
a checkpoint (the copy to CPU memory; the write and upload run in the background) and
estimates M from the failures it has seen, starting from a prior:

    PRIOR_NODE_MTBF_HOURS = 2.0   # per node, from the p3.2xlarge spot preemption trace in
                                  # data/spot-traces/preemption/1-node (aws-04-22-2023, 4 AZs, 1 week):
                                  # 431 node-hours alive, 202 preemptions -> 2.13 h.

Node MTBF = (prior + observed node-seconds) / (1 + observed failures): one pseudo-failure
of prior weight, so the estimate starts at the prior and follows the evidence as it comes.
The job's MTBF is the node MTBF over the number of nodes (any node's loss stops the step).

Two floors keep the answer sane: never more often than a checkpoint can be committed
(write + upload time, since one is in flight at a time), and never more often than Ray
Train's controller collects reports (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`: 2 s by default,
0.25 s in spotray's runs, spotray.elastic.registry; Ray Train hands the driver's setting to
its workers, where this runs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

CONTROLLER_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often Ray Train collects reports
RAY_REPORT_POLL_S = 2.0  # Ray Train's default for it; reports faster than the poll queue up
MAX_INTERVAL_S = 3600.0  # even a very stable job checkpoints hourly


def young_daly_seconds(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """The optimal interval sqrt(2 * C * M), in seconds."""
    return math.sqrt(2.0 * max(checkpoint_cost_s, 0.0) * mtbf_s)


@dataclass(frozen=True)
class Observation:
    """What the training loop has measured so far."""

    step_s: float  # seconds per training step (recent average)
    stall_s: float  # seconds the training thread waited for the last checkpoint
    commit_s: float  # seconds from snapshot to the checkpoint being written (and uploaded)
    failures: int  # restarts seen by this run
    node_seconds: float  # node-seconds this run has been exposed to failure
    nodes: int  # nodes the job spans now


@dataclass(frozen=True)
class FixedInterval:
    """Checkpoint every `steps` steps."""

    steps: int

    def next_interval(self, obs: Observation | None) -> int:
        return self.steps


@dataclass(frozen=True)
class YoungDalyInterval:
    """Checkpoint at the Young/Daly interval, re-estimated at every checkpoint."""

    prior_node_mtbf_s: float
    first_steps: int = 20  # before anything is measured
    report_poll_s: float = RAY_REPORT_POLL_S  # the controller's poll: the floor

    def mtbf_s(self, obs: Observation) -> float:
        node_mtbf = (self.prior_node_mtbf_s + obs.node_seconds) / (1 + obs.failures)
        return node_mtbf / max(obs.nodes, 1)

    def interval_s(self, obs: Observation) -> float:
        ideal = young_daly_seconds(obs.stall_s, self.mtbf_s(obs))
        return min(max(ideal, obs.commit_s, self.report_poll_s), MAX_INTERVAL_S)

    def next_interval(self, obs: Observation | None) -> int:
        if obs is None or obs.step_s <= 0:
            return self.first_steps
        return max(1, math.ceil(self.interval_s(obs) / obs.step_s))


IntervalPolicy = FixedInterval | YoungDalyInterval


def policy_for(interval: int | str, prior_node_mtbf_hours: float) -> IntervalPolicy:
    """The config's policy; `auto` floored at the controller's poll as this process sees it."""
    if interval == "auto":
        poll_s = float(os.environ.get(CONTROLLER_POLL_ENV, RAY_REPORT_POLL_S))
        return YoungDalyInterval(prior_node_mtbf_s=prior_node_mtbf_hours * 3600.0, report_poll_s=poll_s)
    return FixedInterval(int(interval))
