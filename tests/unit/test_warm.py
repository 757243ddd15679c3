"""Warm spares: how many the driver keeps on which node, as groups start and nodes come and go.

The raylet's side (a prestarted worker taken by a Ray Train worker) is exercised for real by
`tests/integration/test_chaos.py`; here the bookkeeping meets a cluster described as
`ray.nodes()` describes it.
"""

from __future__ import annotations

from typing import Any

from spotray.config import ScalingSection
from spotray.driver.warm import WarmSpares
from spotray.runtime import messages as msg

ENV = '{"env_vars":{"X":"1"}}'


def node(node_id: str, cpus: float, alive: bool = True, **extra: float) -> dict[str, Any]:
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerAddress": "127.0.0.1",
        "NodeManagerPort": 1,
        "Resources": {"CPU": cpus, **extra},
    }


class Cluster:
    """What the spares see: the node table, the draining set, and the prestarts asked for."""

    def __init__(self, *nodes: dict[str, Any]) -> None:
        self.table = list(nodes)
        self.draining: set[str] = set()
        self.asked: list[tuple[str, int]] = []
        self.failing: set[str] = set()

    def prestart(self, entry: dict[str, Any], job_id: str, runtime_env: str, count: int) -> None:
        assert (job_id, runtime_env) == ("01000000", ENV)
        if entry["NodeID"] in self.failing:
            raise ConnectionError("raylet unreachable")
        self.asked.append((entry["NodeID"], count))

    def spares(self, scaling: ScalingSection) -> WarmSpares:
        return WarmSpares(scaling, "01000000", lambda: self.table, lambda: self.draining, self.prestart)


def started(*worker_nodes: str) -> msg.Started:
    nodes = list(worker_nodes)
    return msg.Started(0, len(nodes), 1, None, False, [], [], 1, worker_nodes=nodes, runtime_env=ENV)


def test_nothing_is_started_before_the_workers_runtime_env_is_known() -> None:
    cluster = Cluster(node("a", 4))
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=2))
    spares(None, [])
    assert cluster.asked == []


def test_every_node_that_can_host_workers_gets_one_spare_per_worker_it_can_host() -> None:
    cluster = Cluster(
        node("head", 0),  # hosts no worker
        node("big", 8),  # could host 8, the job has at most 3
        node("small", 1),
        node("other", 8),
        node("dead", 4, alive=False),
        node("draining", 4),
    )
    cluster.draining = {"draining"}
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=3))
    spares(None, [started("big", "small")])
    assert sorted(cluster.asked) == [("big", 3), ("other", 3), ("small", 1)]


def test_gpu_workers_count_gpus() -> None:
    cluster = Cluster(node("cpu-only", 32), node("four-gpus", 32, GPU=4.0))
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=8, use_gpu=True))
    spares(None, [started("four-gpus")])
    assert cluster.asked == [("four-gpus", 4)]


def test_a_restart_takes_spares_and_they_are_replaced_at_once() -> None:
    cluster = Cluster(node("a", 1), node("b", 1), node("c", 1))
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=2))
    spares(None, [started("a", "b")])
    assert sorted(cluster.asked) == [("a", 1), ("b", 1), ("c", 1)]
    cluster.asked.clear()
    spares(None, [])  # nothing changed: nothing asked, however often it looks
    spares.last_top_up = 0.0
    spares(None, [])
    assert cluster.asked == []
    # "a" is preempted; the group restarts on "b" and "c", each worker taking its node's spare.
    cluster.table = [node("b", 1), node("c", 1), node("d", 1)]
    spares(None, [started("b", "c")])
    assert sorted(cluster.asked) == [("b", 1), ("c", 1), ("d", 1)]


def test_a_node_that_joins_is_warmed_at_the_next_top_up() -> None:
    cluster = Cluster(node("a", 1))
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=2))
    spares(None, [started("a")])
    cluster.table.append(node("replacement", 1))
    spares(None, [])  # within TOP_UP_EVERY_S of the last: not yet
    assert cluster.asked == [("a", 1)]
    spares.last_top_up = 0.0
    spares(None, [])
    assert cluster.asked == [("a", 1), ("replacement", 1)]


def test_a_prestart_that_fails_is_tried_again() -> None:
    cluster = Cluster(node("a", 1), node("b", 1))
    cluster.failing = {"b"}
    spares = cluster.spares(ScalingSection(min_workers=1, max_workers=2))
    spares(None, [started("a")])
    assert cluster.asked == [("a", 1)]
    cluster.failing = set()
    spares.last_top_up = 0.0
    spares(None, [])
    assert cluster.asked == [("a", 1), ("b", 1)]
