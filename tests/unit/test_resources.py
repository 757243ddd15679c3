"""The check of a model against the nodes of a cluster the run attaches to (`--address`)."""

from __future__ import annotations

from typing import Any

import pytest

from spotray.config import JobConfig
from spotray.driver.resources import check_cluster_fits
from spotray.errors import ConfigError
from tests.conftest import TEST_CONFIG, deep_merge

GB = 1e9
PARAMETERS = 100_000_000  # 1.6 GB of training state with AdamW, 0.4 GB in fp32


def config(**scaling: Any) -> JobConfig:
    return JobConfig.model_validate(deep_merge(TEST_CONFIG, {"scaling": scaling}))


def node(memory_gb: float, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"Alive": alive, "Resources": {"CPU": 8.0, "memory": memory_gb * GB, **resources}}


def test_a_node_that_can_host_a_worker_but_is_too_small_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"a worker needs about 2\.0 GB .* at most 1\.5 GB"):
        check_cluster_fits(config(), PARAMETERS, [node(1.5), node(64.0, alive=False)])


def test_fsdp_shards_the_state_over_the_workers() -> None:
    check_cluster_fits(config(strategy="fsdp", min_workers=2, max_workers=4), PARAMETERS, [node(1.5)])


def test_only_nodes_with_the_workers_resources_count() -> None:
    """GPU workers: a big CPU-only head does not help, and a GPU node holds the fp32 model."""
    gpu = config(use_gpu=True)
    with pytest.raises(ConfigError, match=r"at most 0\.6 GB"):
        check_cluster_fits(gpu, 4 * PARAMETERS, [node(256.0), node(0.6, GPU=1.0)])
    check_cluster_fits(gpu, PARAMETERS, [node(256.0), node(1.0, GPU=1.0)])


def test_no_node_that_can_host_a_worker_yet_leaves_it_to_the_autoscaler() -> None:
    check_cluster_fits(config(use_gpu=True), PARAMETERS, [node(0.1)])
