"""A new worker group goes to the nodes whose warm spares are ready, and takes them.

On a real local Ray cluster of three worker nodes: spares (idle workers with the training
workers' runtime env, which runs `spotray.runtime.preload`) are prestarted on two of them,
the third has none, as a replacement that joined at a notice. spotray's scaling policy,
asked by Ray Train's hook where the next group goes, must name the two; a placement group
with that selector lands there, and the group's actors take the spares. The ready marks
of spares still idle when the run ends are removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import ray
from ray.train import ScalingConfig
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from spotray.driver.trainer import PRELOAD_HOOK
from spotray.elastic.recovery import FreshElasticPolicy
from spotray.ray_compat.node import keep_on_loopback
from spotray.ray_compat.workers import current_runtime_env, prestart, setup_hook_env
from spotray.runtime.preload import forget_ready_spares, ready_spares
from tests.integration.faults import wait_for

pytestmark = pytest.mark.integration

WORKER = {"CPU": 1.0, "spot": 1.0}
RUNTIME_ENV = {"env_vars": setup_hook_env(PRELOAD_HOOK)}


@ray.remote(num_cpus=0)
class Probe:
    """A training worker's stand-in: the same runtime env, so it can take a spare."""

    def where(self) -> tuple[str, bool, str]:
        from spotray.runtime import preload

        deadline = time.monotonic() + 10  # preload's thread notices its actor within 10 ms
        while preload._taken_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        node = ray.get_runtime_context().get_node_id()
        return node, preload.was_spare(), current_runtime_env()


@pytest.fixture
def cluster() -> Iterator[list[str]]:
    """Three worker nodes of one worker each, no worker room on the head; their ids."""
    from ray.cluster_utils import Cluster

    keep_on_loopback()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [c.add_node(num_cpus=1, resources={"spot": 1}).node_id for _ in range(3)]
        ray.init(address=c.address, log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        c.shutdown()


def test_the_group_goes_to_the_ready_spares_and_takes_them(cluster: list[str]) -> None:
    warm, cold = cluster[:2], cluster[2]  # the third node has no spare yet
    job = ray.get_runtime_context().get_job_id()
    # The workers' runtime env exactly as Ray serializes it, from a process that has it.
    probe = Probe.options(runtime_env=RUNTIME_ENV).remote()
    _, _, runtime_env = ray.get(probe.where.remote(), timeout=120)
    ray.kill(probe)
    table = {n["NodeID"]: n for n in ray.nodes()}
    for node in warm:
        prestart(table[node], job, runtime_env, 1)
    wait_for(lambda: set(ready_spares(job)) >= set(warm), timeout=120, what="the spares' imports")
    time.sleep(1)  # a spare is one that waited (preload.IDLE_S)

    policy = FreshElasticPolicy(ScalingConfig(num_workers=(1, 2), resources_per_worker=WORKER))
    config = policy.scaling_config
    selector = policy.on_controller_start_worker_group(scaling_config=config, num_workers=2)
    assert selector == {"ray.io/node-id": f"in({','.join(sorted(warm))})"}

    pg = placement_group([WORKER] * 2, strategy="PACK", bundle_label_selector=[selector] * 2)
    ray.get(pg.ready(), timeout=60)
    assert sorted(placement_group_table(pg)["bundles_to_node_id"].values()) == sorted(warm)
    workers = [
        Probe.options(
            runtime_env=RUNTIME_ENV,
            num_cpus=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote()
        for i in range(2)
    ]
    seen = ray.get([w.where.remote() for w in workers], timeout=60)
    assert sorted(node for node, _, _ in seen) == sorted(warm)  # not the cold one
    # The actors took the spares there (Ray's raylet hands an actor a matching idle worker),
    # and a taken spare's mark goes.
    took = {node for node, spare, _ in seen if spare}
    assert took, seen
    wait_for(lambda: not took & set(ready_spares(job)), timeout=10, what="the taken spares' marks to go")
    # A spare topped up on the third node is left when the run ends: the driver forgets it.
    prestart(table[cold], job, runtime_env, 1)
    wait_for(lambda: cold in ready_spares(job), timeout=120, what="the third node's spare")
    forget_ready_spares(job)
    assert ready_spares(job) == {}
    remove_placement_group(pg)
