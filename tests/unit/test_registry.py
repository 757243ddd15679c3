"""Recoveries by name: what each one gives Ray Train for a fixed, elastic or fallback job."""

from __future__ import annotations

import pytest
from ray.train.torch import TorchTrainer

from spotray.config import parse_config
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


def test_spotray_runs_its_policies_only_where_the_job_can_change_size() -> None:
    spotray = recovery("spotray")
    fixed, elastic = parse_config(TEST_CONFIG), parse_config(deep_merge(TEST_CONFIG, ELASTIC))
    assert spotray.trainer_class(fixed) is TorchTrainer and spotray.callbacks(fixed) == []
    assert spotray.scaling_options(fixed) == {}
    for cfg in (elastic, parse_config(deep_merge(TEST_CONFIG, FALLBACK))):
        assert spotray.trainer_class(cfg) is not TorchTrainer
        assert issubclass(spotray.trainer_class(cfg), TorchTrainer)
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
