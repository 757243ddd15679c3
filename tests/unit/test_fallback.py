"""The on-demand fallback rule, stepped with scripted capacity and time (no Ray)."""

from __future__ import annotations

from spotray.elastic.fallback import FallbackRule, _count


def test_waits_on_spot_until_the_wait_is_over_then_takes_on_demand_at_min() -> None:
    rule = FallbackRule(min_workers=2, after_s=600)
    assert rule.start(spot=1, on_demand=2, now=0) is None  # short since t=0: wait
    assert rule.start(spot=0, on_demand=2, now=599) is None
    assert rule.start(spot=0, on_demand=0, now=600) is None  # on-demand asked for, not there yet
    assert rule.wants_on_demand(spot=0, now=600)
    assert rule.start(spot=0, on_demand=2, now=601) == ("on-demand", 2)


def test_spot_back_before_the_wait_restarts_the_clock() -> None:
    rule = FallbackRule(min_workers=2, after_s=600)
    assert rule.start(spot=0, on_demand=2, now=0) is None
    assert rule.start(spot=3, on_demand=2, now=500) == ("spot", 3)
    assert rule.start(spot=1, on_demand=2, now=700) is None  # short again since 700, not since 0
    assert rule.start(spot=1, on_demand=2, now=1300) == ("on-demand", 2)


def test_leaves_on_demand_as_soon_as_spot_holds_min_workers() -> None:
    rule = FallbackRule(min_workers=2, after_s=60)
    rule.start(spot=0, on_demand=0, now=0)
    assert rule.start(spot=0, on_demand=2, now=60) == ("on-demand", 2)
    assert not rule.leave_on_demand(spot=1, now=100)
    assert rule.leave_on_demand(spot=2, now=200)
    assert rule.short_since is None  # a later shortage waits the full wait again


def test_count_is_per_node_and_capped() -> None:
    per_worker = {"CPU": 1.0, "spot_gpu_node": 1.0}
    nodes = {
        "a": {"CPU": 4.0, "spot_gpu_node": 1.0},  # one marker: one worker
        "b": {"CPU": 1.0, "spot_gpu_node": 2.0},  # one CPU: one worker
        "c": {"CPU": 8.0},  # an on-demand node: none
    }
    assert _count(nodes, per_worker, cap=8) == 2
    assert _count(nodes, per_worker, cap=1) == 1
