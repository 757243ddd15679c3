"""Recoveries by name: what each one gives Ray Train for a fixed, elastic or fallback job."""

from __future__ import annotations

import pytest
from ray.train.torch import TorchTrainer

from spotray.config import parse_config
from spotray.elastic.recovery import PreemptionFailurePolicy
from spotray.elastic.registry import RECOVERIES, recovery
from spotray.errors import ConfigError
from tests.conftest import TEST_CONFIG, deep_merge

ELASTIC = {"scaling": {"min_workers": 1, "max_workers": 3, "resize_check_s": 7}}
FALLBACK = {
    "scaling": {
        "min_workers": 1,
        "max_workers": 3,
        "on_demand_after_s": 30,
        "resources_per_worker": {"spot_node": 1},
        "on_demand_resources_per_worker": {"on_demand_node": 1},
    }
}


def test_spotray_runs_its_scaling_policies_only_where_the_job_can_change_size() -> None:
    spotray = recovery("spotray")
    fixed, elastic = parse_config(TEST_CONFIG), parse_config(deep_merge(TEST_CONFIG, ELASTIC))
    trainer = spotray.trainer_class(fixed)
    assert issubclass(trainer, TorchTrainer) and trainer.scaling_policy is None
    assert trainer.failure_policy is PreemptionFailurePolicy  # a group ended early is a preemption
    assert spotray.callbacks(fixed) == [] and spotray.scaling_options(fixed) == {}
    for cfg in (elastic, parse_config(deep_merge(TEST_CONFIG, FALLBACK))):
        trainer = spotray.trainer_class(cfg)
        assert issubclass(trainer, TorchTrainer) and trainer.scaling_policy is not None
        assert trainer.failure_policy is PreemptionFailurePolicy
        assert [type(c).__name__ for c in spotray.callbacks(cfg)] == ["FreshClusterView", "ReportClock"]
    assert spotray.scaling_options(elastic) == {"elastic_resize_monitor_interval_s": 7}
    assert spotray.heeds_notices and spotray.ray_env and spotray.system_config


def test_ray_alone_is_ray_trains_defaults_for_every_job() -> None:
    ray_alone = recovery("ray")
    for extra in ({}, ELASTIC, FALLBACK):
        cfg = parse_config(deep_merge(TEST_CONFIG, extra))
        assert ray_alone.trainer_class(cfg) is TorchTrainer
        assert ray_alone.callbacks(cfg) == [] and ray_alone.scaling_options(cfg) == {}
    assert not ray_alone.heeds_notices and ray_alone.ray_env == {} and ray_alone.system_config == {}


def test_an_unknown_recovery_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="no recovery named 'k8s': one of " + ", ".join(RECOVERIES)):
        recovery("k8s")


def test_a_group_ended_ahead_of_a_preemption_counts_as_the_preemption_not_a_failure() -> None:
    import pickle

    from ray.train import FailureConfig, WorkerGroupError
    from ray.train.v2._internal.execution.failure_handling import FailureDecision

    from spotray.runtime.preemption import NodeLeaving

    leaving = pickle.loads(pickle.dumps(NodeLeaving(44, 1_000_000, {"node-a": [1]})))  # as Ray ships it
    assert (leaving.step, leaving.deadline_ms, leaving.nodes) == (44, 1_000_000, {"node-a": [1]})
    assert "step 44 is checkpointed" in str(leaving)
    # No failure allowed, preemptions unlimited (Ray's default): the hand-over is retried,
    # a real error is not.
    policy = PreemptionFailurePolicy(FailureConfig(max_failures=0))
    handed_over = WorkerGroupError("ended", {0: leaving})
    assert policy.make_decision(handed_over) == FailureDecision.RETRY
    assert policy.make_decision(handed_over) == FailureDecision.RETRY
    assert policy.make_decision(WorkerGroupError("bug", {0: ValueError("x")})) == FailureDecision.RAISE
