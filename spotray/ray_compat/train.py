"""Ray Train 2.60's scaling and failure policies and controller, which its public API does
not open; a worker's own copy of a preemption signal; its upload of a checkpoint; and the
log line its workers write for every error that ends a training function.

Train 2.60 builds its scaling policy from `ScalingConfig` alone. spotray's policies (growth
from a checkpoint they ask for, draining nodes left out, the on-demand fallback) subclass
its elastic policy (`ray.train.v2._internal.execution.scaling_policy`) and reach it through
`ElasticPolicyBase`'s public-named methods only. Likewise its failure policy comes from
`FailureConfig` alone; spotray's (a group its loop ended ahead of a preemption counted as
that preemption) subclasses Ray's default one (`FailurePolicyBase`). The controller gets
both through `TorchTrainer._initialize_and_run_controller`. Public replacement: pluggable
policies in `ScalingConfig` and `FailureConfig`, which Ray Train does not have.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ray.train.v2._internal import util as train_util
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
from ray.train.v2._internal.execution.scaling_policy import (
    ElasticScalingPolicy,
    NoopDecision,
    ResizeDecision,
    ScalingDecision,
)
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    AUTOSCALING_REQUESTS_GET_TIMEOUT_S,
    TrainAutoscalingCoordinatorClient,
)

__all__ = [
    "AUTOSCALING_REQUESTS_GET_TIMEOUT_S",
    "ElasticPolicyBase",
    "FailurePolicyBase",
    "NoopDecision",
    "ResizeDecision",
    "ScalingDecision",
    "TrainAutoscalingCoordinatorClient",
    "coordinator_of",
    "persist_checkpoint",
    "policy_trainer",
    "quiet_expected_errors",
    "signalled_preemption",
]


class ElasticPolicyBase(ElasticScalingPolicy):
    """Ray's elastic policy, with the few members spotray's policies use under public names.

    Subclasses override `reserved_resources` (not Ray's `_get_reserved_resources`, which
    this routes to it) and call `ray_reserved_resources` for Ray's own cached read.
    """

    @property
    def requester_id(self) -> str:
        return self._requester_id

    def reserved_resources(self) -> Any:
        """What the autoscaling coordinator reserves for this job (None: nothing yet)."""
        return self.ray_reserved_resources()

    def ray_reserved_resources(self) -> Any:
        return super()._get_reserved_resources()

    def _get_reserved_resources(self) -> Any:  # Ray's own decisions read it here too
        return self.reserved_resources()

    def remember_reserved_resources(self, reserved: Any, now: float) -> None:
        """Put a fresh read into Ray's 1 s read cache, which would otherwise hide it."""
        self._latest_reserved_resources = reserved
        self._latest_reserved_resources_query_time = now

    def possible_workers(self, reserved: Any) -> int:
        """How many workers the reservation holds (Ray's own count)."""
        return self._count_possible_workers(reserved)

    def resize_decision(self, workers: int) -> ScalingDecision:
        return self._get_resize_decision(workers)


class FailurePolicyBase(DefaultFailurePolicy):
    """Ray's default failure policy (retries against `FailureConfig`'s budgets); subclasses
    override `make_decision(training_failed_error)` and call super."""


def coordinator_of(client: TrainAutoscalingCoordinatorClient) -> tuple[Any, str]:
    """The coordinator actor behind a client, and the client's requester id."""
    return client._autoscaling_coordinator, client._requester_id


def policy_trainer(
    make_scaling: Callable[[Any], Any] | None = None,
    make_failure: Callable[[Any], Any] | None = None,
) -> type:
    """A TorchTrainer whose controller runs `make_scaling(scaling_config)` as its scaling
    policy and `make_failure(failure_config)` as its failure policy, where given: the
    trainer's `_initialize_and_run_controller` is the one place to hand it either."""
    from ray.train.torch import TorchTrainer

    class PolicyTorchTrainer(TorchTrainer):
        scaling_policy = staticmethod(make_scaling) if make_scaling else None
        failure_policy = staticmethod(make_failure) if make_failure else None

        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            if self.scaling_policy is not None:
                kwargs["scaling_policy"] = self.scaling_policy(self.scaling_config)
            if self.failure_policy is not None:
                kwargs["failure_policy"] = self.failure_policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

    return PolicyTorchTrainer


class _Expected(logging.Filter):
    def __init__(self, kinds: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], self.kinds)  # logged inside the `except`


def quiet_expected_errors(*kinds: type[BaseException]) -> None:
    """Keep Ray Train's worker from logging "Error in training function" and a traceback
    for an exception of `kinds` in this process: one the loop raises on purpose (a group
    ended ahead of a preemption) reads there as a crash at every announced preemption.
    Other exceptions are logged as before. Private: `ray.train.v2._internal.util`'s logger,
    which `construct_user_exception_with_traceback` writes to from its `except` block. Public
    replacement: none (Ray Train has no way to end a worker group that is not an error)."""
    logger = logging.getLogger(train_util.__name__)
    if not any(isinstance(f, _Expected) and f.kinds == kinds for f in logger.filters):
        logger.addFilter(_Expected(kinds))


def persist_checkpoint(checkpoint: Any, dir_name: str) -> Any:
    """Ray Train's own upload of a reported checkpoint into the run's storage: what
    `ray.train.report` runs without a `checkpoint_upload_fn` (its S3 settings included), for
    the loop to pass as that function and so time the upload. DeveloperAPI: the train
    context's `get_storage()` and its `persist_current_checkpoint`, which Ray's own errors
    point custom uploads to. Public replacement: none (report does not say how long an
    upload took)."""
    import ray.train

    return ray.train.get_context().get_storage().persist_current_checkpoint(checkpoint, dir_name)


def signalled_preemption() -> Any:
    """The `PreemptionInfo` Ray Train's drain watcher gave this worker (None: none yet), read
    where it lies rather than through `ray.train.get_preemption_info()`, a collective through
    the synchronization actor: the loop reads this at every step and agrees on it over its
    own process group (`runtime.loop.agreed_preemption`). Private: the train context's
    `preemption_context`, which `RayTrainWorker.mark_preempt` sets. Public replacement: none."""
    from ray.train.v2._internal.execution.context import get_train_context

    try:
        return get_train_context().preemption_context.preemption_info
    except RuntimeError:  # no worker context (Ray Train's local mode): no drain watcher either
        return None
