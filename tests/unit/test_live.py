"""The cluster as Ray's node table has it, priced: Ray's own GcsNodeInfo messages in, the
same dollars as the bill out, and the driver's tally of lost work for the gauges."""

from __future__ import annotations

from datetime import datetime

import pytest
from ray.core.generated import gcs_pb2

from spotray.cost.live import _from_node_info, price_cluster
from spotray.cost.prices import PriceSeries, load_on_demand
from spotray.driver.progress import RunState
from spotray.runtime import messages as msg


def at(hhmm: str) -> float:
    return datetime.fromisoformat(f"2026-11-26T{hhmm}:00+00:00").timestamp()


def node_info(n: int, start: str, labels: dict[str, str], end: str | None = None, reason: int = 0, **kw):
    info = gcs_pb2.GcsNodeInfo(
        node_id=bytes([n]) * 28,
        start_time_ms=int(at(start) * 1000),
        state=gcs_pb2.GcsNodeInfo.DEAD if end else gcs_pb2.GcsNodeInfo.ALIVE,
        **kw,
    )
    info.labels.update(labels)
    if end:
        info.end_time_ms = int(at(end) * 1000)
        info.death_info.reason = reason
    return _from_node_info(info)


SPOT_A = {"market": "spot", "instance-type": "p3.8xlarge", "ray.io/availability-zone": "us-east-1a"}
HEAD = node_info(1, "10:00", {"market": "on-demand", "instance-type": "m5.2xlarge"}, is_head_node=True)
RUNNING = node_info(2, "11:00", SPOT_A, instance_id="i-0running")
PREEMPTED = node_info(3, "10:00", SPOT_A, end="11:30", reason=3)  # AUTOSCALER_DRAIN_PREEMPTED
IDLE = node_info(4, "10:00", SPOT_A, end="10:30", reason=4)  # AUTOSCALER_DRAIN_IDLE
KILLED = node_info(5, "10:00", SPOT_A, end="10:15", reason=2)  # UNEXPECTED_TERMINATION, no notice
SIGTERMED = node_info(7, "10:00", SPOT_A, end="10:20", reason=1)  # EXPECTED_TERMINATION
UNLABELLED = node_info(6, "10:00", {})


def test_node_table_rows_become_nodes() -> None:
    assert HEAD.is_head and HEAD.market == "on-demand" and HEAD.alive and HEAD.end is None
    assert RUNNING.instance_id == "i-0running" and RUNNING.zone == "us-east-1a"
    assert PREEMPTED.end == at("11:30") and PREEMPTED.end_reason == "preempted"
    assert IDLE.end_reason == "scaled in" and KILLED.end_reason == "preempted"
    assert SIGTERMED.end_reason == "scaled in"  # how the autoscaler's idle drain ends, in fact
    # Without an EC2 id, Ray's node id and the start time name the node in the ledger.
    assert PREEMPTED.instance_id == f"{PREEMPTED.node_id}@{at('10:00'):.0f}"
    assert UNLABELLED.instance_type is None


def test_cluster_priced_like_the_bill() -> None:
    spot = PriceSeries()
    spot.add(at("09:00"), 0.90)
    spot.add(at("11:00"), 1.20)
    table = load_on_demand()
    head_rate = table.price("m5.2xlarge", "us-east-1")
    nodes = [HEAD, RUNNING, PREEMPTED, IDLE, UNLABELLED]
    priced = price_cluster(nodes, "c", table, {("p3.8xlarge", "us-east-1a"): spot}, at("12:00"))
    # Live now: the head on demand, the running spot node at the 11:00 price. The unlabelled
    # node is shown, not priced.
    assert priced.rates == {HEAD.node_id: (head_rate, False), RUNNING.node_id: (1.20, False)}
    assert priced.usd_per_hour == pytest.approx(head_rate + 1.20)
    # So far: head 2 h on demand; running 1 h at 1.20; preempted 1 h at 0.90 + 0.5 h at 1.20;
    # idle 0.5 h at 0.90.
    expected = 2 * head_rate + 1.20 + (0.90 + 0.60) + 0.45
    assert priced.bill.cost == pytest.approx(expected, abs=0.005)


def test_spot_node_without_a_price_is_an_estimate() -> None:
    priced = price_cluster([RUNNING], "c", load_on_demand(), {}, at("12:00"))
    rate, estimated = priced.rates[RUNNING.node_id]
    assert estimated and rate == load_on_demand().price("p3.8xlarge", "us-east-1")  # the upper bound
    assert priced.bill.estimated == ["i-0running"]


def test_run_state_counts_lost_steps_and_time() -> None:
    def start(step: int, world: int, at: float) -> msg.Started:
        return msg.Started(step, world, 1, None if step == 0 else "x", False, [], [], 1, time=at)

    state = RunState(total=100)
    state.fold(None, [start(0, 2, 0.0)])
    state.fold(None, [msg.Checkpointed(step=20, path="x", stall_s=0.0, write_s=0.1, time=10.0)])
    state.fold(msg.Stepped(27, 1.0, 2, samples_per_s=1.0, tokens_per_s=None, lr=1e-3, time=12.0), [])
    assert "1.0 samples/s" in state.status()
    # The node goes at step 27; the new worker group starts from step 20 at t = 20 s.
    state.fold(None, [start(20, 1, 20.0)])
    assert state.restarts == 1 and state.steps_lost == 7
    assert state.lost_s == 10.0  # from the checkpoint at 10 s to the restart at 20 s
    assert state.goodput(now=40.0) == pytest.approx(0.75)


def test_a_checkpoint_not_resumed_from_is_no_longer_shown_as_saved() -> None:
    """Checkpoint 20 was handed to Ray, then its upload was torn: the restart resumes from 10."""

    def saved(step: int) -> msg.Checkpointed:
        return msg.Checkpointed(step=step, path=f"c{step}", stall_s=0.0, write_s=0.1, time=float(step))

    state = RunState(total=30)
    state.fold(None, [msg.Started(0, 1, 1, None, False, [], [], 1, time=0.0), saved(10), saved(20)])
    assert "checkpoint step 20" in state.status()
    state.fold(None, [msg.Started(10, 1, 1, "c10", False, ["c20: no spotray.json"], [], 2, time=25.0)])
    assert "checkpoint step 10" in state.status()
