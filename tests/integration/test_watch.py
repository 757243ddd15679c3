"""`spotray watch` against a real local Ray cluster and the loopback IMDS.

Each test gets a fresh node (with an actor on it, so a drained node stays up to be read
back) and reads the outcome where Ray keeps it: the GCS's list of draining nodes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from spotray.chaos.imds_server import FakeIMDS
from spotray.cluster.status import read_status
from spotray.cost.ledger import Ledger
from spotray.runtime.messages import CheckpointRequest
from spotray.spot.imds import IMDSClient
from spotray.spot.watch import (
    KV_NAMESPACE,
    NoticePolicy,
    RayNode,
    RebalanceAction,
    Watcher,
    read_notices,
)
from tests.conftest import REPO, spotray_env
from tests.integration.faults import wait_for

pytestmark = pytest.mark.integration


@ray.remote(num_cpus=0, resources={"probe": 1})
class Occupant:
    """Keeps a node busy, so that draining it does not make it exit at once."""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def node(cluster) -> Iterator[tuple[str, str]]:
    """(GCS address, node id) of a new busy node."""
    added = cluster.add_node(num_cpus=0, resources={"probe": 1})
    occupant = Occupant.options(
        scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            added.node_id, soft=False
        )
    ).remote()
    assert ray.get(occupant.node_id.remote()) == added.node_id
    yield cluster.gcs_address, added.node_id
    ray.kill(occupant)
    cluster.remove_node(added, allow_graceful=False)


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS(instance_id="i-0watchtest0000000") as server:
        yield server


def draining() -> dict[str, int]:
    return ray._private.state.state.get_draining_nodes()


def watcher_for(imds: FakeIMDS, node: tuple[str, str], **kw) -> Watcher:
    gcs, node_id = node
    return Watcher(IMDSClient(imds.url, timeout_s=0.5), RayNode(gcs, node_id), NoticePolicy(**kw))


def test_nothing_announced_drains_nothing(imds, node) -> None:
    watcher = watcher_for(imds, node)
    assert watcher.poll_once() == []
    assert node[1] not in draining()


def test_notice_drains_the_node_once_with_its_deadline(imds, node, tmp_path: Path) -> None:
    watcher = watcher_for(imds, node)
    at = imds.serve_notice("terminate", lead_s=120)
    [record] = watcher.poll_once()
    assert draining()[node[1]] == int(at.replace(microsecond=0).timestamp() * 1000)
    assert record.handled == "drained" and record.action == "terminate"
    assert record.instance_id == "i-0watchtest0000000"
    assert watcher.poll_once() == []  # polled again: the same notice is not handled twice
    recorded = [r for r in read_notices(node[0]) if r.node_id == node[1]]
    assert len(recorded) == 1 and recorded[0].deadline == at.replace(microsecond=0).isoformat()
    # `spotray status` shows that node draining and counts the notice.
    with Ledger(tmp_path / "ledger.db") as ledger:
        shown = read_status(node[0], "c", ledger).as_dict()
    assert [n["draining"] for n in shown["nodes"] if n["node_id"] == node[1]] == [True]
    assert shown["notices"] >= 1


def test_a_drained_node_is_not_counted_for_the_next_worker_group(cluster, imds, node) -> None:
    """Ray places nothing new on a draining node, but the autoscaling coordinator counts it
    while it is alive: an elastic job restarted at the notice's deadline must be sized on
    the nodes that can take its workers (spotray.elastic.recovery)."""
    from spotray.elastic.recovery import _without_draining

    head = cluster.head_node.node_id  # never drained (an earlier test's node may still be)

    def alone() -> bool:  # earlier tests' nodes are gone, and known to be (they could hold a share)
        return [n["NodeID"] for n in ray.nodes() if n["Alive"] and "probe" in n["Resources"]] == [node[1]]

    wait_for(alone, 30, "earlier tests' nodes marked dead")
    reserved = {node[1]: {"probe": 1.0}, head: {"CPU": 1.0}}  # the coordinator's shape
    assert _without_draining(reserved) == reserved
    imds.serve_notice("terminate", lead_s=120)
    watcher_for(imds, node).poll_once()
    assert _without_draining(reserved) == {head: {"CPU": 1.0}}
    # A node that can hold the draining node's share (a spare, or the replacement launched
    # at the notice) takes it: the coordinator, asked for no more than the job's size, had
    # left it out because the draining node filled the reservation.
    spare = cluster.add_node(num_cpus=0, resources={"probe": 1})
    try:
        assert _without_draining(reserved) == {head: {"CPU": 1.0}, spare.node_id: {"probe": 1.0}}
    finally:
        cluster.remove_node(spare, allow_graceful=False)


def test_rebalance_asks_for_a_checkpoint_without_draining(imds, node) -> None:
    from ray.experimental import internal_kv

    before = time.time()
    imds.serve_rebalance()
    [record] = watcher_for(imds, node).poll_once()
    assert record.kind == "rebalance" and record.handled == "checkpoint-requested"
    assert node[1] not in draining()
    request = CheckpointRequest.decode(
        internal_kv._internal_kv_get(CheckpointRequest.KEY, namespace=KV_NAMESPACE)
    )
    assert request is not None and request.time >= before and "rebalance" in request.reason


def test_rebalance_can_be_set_to_drain(imds, node) -> None:
    imds.serve_rebalance()
    watcher_for(imds, node, rebalance=RebalanceAction.DRAIN).poll_once()
    assert node[1] in draining()


def test_401_is_renewed_and_the_notice_still_drains(imds, node) -> None:
    watcher = watcher_for(imds, node)
    watcher.poll_once()
    imds.forget_tokens()
    imds.serve_notice("stop", lead_s=60)
    [record] = watcher.poll_once()
    assert record.handled == "drained" and node[1] in draining()


def test_unreachable_or_garbled_imds_never_drains(imds, node) -> None:
    watcher = watcher_for(imds, node)
    imds.serve_garbage()
    assert watcher.poll_once() == []
    imds.stop()
    for _ in range(3):
        assert watcher.poll_once() == []  # keeps going, logs once a minute
    assert watcher._errors == 4
    assert node[1] not in draining()


def test_spotray_watch_command_drains_on_notice_and_stops_on_sigterm(imds, node) -> None:
    gcs, node_id = node
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spotray.cli",
            "watch",
            "--imds-url",
            imds.url,
            "--address",
            gcs,
            "--node-id",
            node_id,
            "--interval",
            "0.2",
        ],
        cwd=REPO,
        env=spotray_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        assert node_id not in draining()
        imds.serve_notice("terminate", lead_s=90)
        wait_for(lambda: node_id in draining(), 30, "the drain")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"watching {imds.url} for node {node_id}" in out


def test_spotray_watch_rejects_an_unknown_node(node) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spotray.cli", "watch", "--address", node[0], "--node-id", "ab" * 28],
        cwd=REPO,
        env=spotray_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is not a live node" in result.stderr
