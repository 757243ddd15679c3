"""How a run meets lost and added nodes, chosen by name: spotray's policies, or Ray Train alone.

`RECOVERIES["ray"]` is the baseline that `spotray chaos --ray-alone` and the benchmarks
measure spotray against: Ray Train's own elastic policy and defaults, notices unheeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spotray.config import JobConfig
from spotray.elastic.interval import CONTROLLER_POLL_ENV
from spotray.errors import ConfigError

# Ray system config for the head node of clusters spotray starts (chaos, cluster.local.yaml):
# a dead node is known in ~3 s instead of ~16 s.
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}

# Ray Train settings for spotray's runs, set in the driver's environment before the
# controller starts (it reads them there).
RAY_TRAIN_SETTINGS = {
    # Ray Train's own drain watcher polls every 5 s by default; a spot notice leaves 120 s,
    # and every second of it is useful training or checkpointing.
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
    # The controller polls its workers this often (Ray: 2 s): a worker that failed, a
    # preemption deadline that passed and a reported checkpoint all wait for the next poll,
    # and a preemption's hand-over waits for two (its checkpoint registered, the group's end
    # seen). Four small calls per worker a second; measured at 0.25 s against 1 s
    # (`bench_preemption.py --arm spotray`): 5.8 s and 5.0 s lost per announced preemption,
    # medians of 3, against 6.7 s and 7.7 s in one run.
    # The checkpoint interval's floor follows it (spotray.elastic.interval).
    CONTROLLER_POLL_ENV: "0.25",
}


@dataclass(frozen=True)
class Recovery:
    """One way to recover: Ray settings, the trainer class, whether notices are heeded."""

    name: str
    heeds_notices: bool  # a watcher per node drains it at its notice (chaos clusters)
    ray_env: dict[str, str] = field(default_factory=dict)
    system_config: dict[str, Any] = field(default_factory=dict)  # the head's, for clusters spotray starts
    own_policies: bool = False  # spotray's scaling policies and their callbacks
    warm_spares: bool = False  # idle worker processes, imports done, on every node (driver.warm)

    def scaling_options(self, cfg: JobConfig) -> dict[str, Any]:
        """Extra `ScalingConfig` arguments: how often an elastic job looks for more nodes."""
        s = cfg.scaling
        if self.own_policies and s.min_workers != s.max_workers:
            return {"elastic_resize_monitor_interval_s": s.resize_check_s}
        return {}

    def trainer_class(self, cfg: JobConfig) -> type:
        """`TorchTrainer`, or one whose controller runs spotray's policies for this config:
        its scaling policy where the job is elastic or falls back to on-demand, and its
        failure policy always (the loop may end a group ahead of a preemption)."""
        from ray.train.torch import TorchTrainer

        if not self.own_policies:
            return TorchTrainer
        from spotray.elastic.fallback import SpotFallbackPolicy
        from spotray.elastic.recovery import FreshElasticPolicy, PreemptionFailurePolicy
        from spotray.ray_compat.train import policy_trainer

        s = cfg.scaling

        def scaling(c: Any) -> Any:
            if s.on_demand_after_s is not None:
                return SpotFallbackPolicy(
                    c, s.on_demand_resources_per_worker, s.on_demand_after_s, s.grow_payback_restarts
                )
            return FreshElasticPolicy(c, s.grow_payback_restarts)

        return policy_trainer(scaling if self.uses_policy(cfg) else None, PreemptionFailurePolicy)

    def callbacks(self, cfg: JobConfig) -> list[Any]:
        """Ray Train callbacks: spotray's policies re-size from a true cluster view, growing
        after a checkpoint they ask for (spotray.elastic.recovery)."""
        if not self.uses_policy(cfg):
            return []
        from spotray.elastic.recovery import FreshClusterView, ReportClock

        return [FreshClusterView(), ReportClock()]

    def uses_policy(self, cfg: JobConfig) -> bool:
        s = cfg.scaling
        return self.own_policies and (s.on_demand_after_s is not None or s.min_workers != s.max_workers)


RECOVERIES = {
    "spotray": Recovery(
        "spotray",
        heeds_notices=True,
        ray_env=RAY_TRAIN_SETTINGS,
        system_config=FAST_HEALTH_CHECK,
        own_policies=True,
        warm_spares=True,
    ),
    "ray": Recovery("ray", heeds_notices=False),
}


def recovery(name: str) -> Recovery:
    try:
        return RECOVERIES[name]
    except KeyError:
        raise ConfigError(f"no recovery named {name!r}: one of {', '.join(RECOVERIES)}") from None
