"""The growth rule that spotray's elastic policy and the simulator share, by hand."""

from __future__ import annotations

import pytest

from spotray.elastic.growth import Pace, growth_pays, saved_s
from spotray.runtime.messages import CheckpointReport


def test_growth_pays_when_the_time_saved_exceeds_the_restarts() -> None:
    # 140 steps of 1 s on 1 worker; 2 workers halve them: 70 s saved > 2 x 12 s.
    assert saved_s(140, 1.0, 1, 2) == 70
    assert growth_pays(140, 1.0, 1, 2, restart_s=12, payback=2)
    # 50 steps of 0.2 s: 5 s saved < 2 x 10 s.
    assert not growth_pays(50, 0.2, 1, 2, restart_s=10, payback=2)
    # 2 -> 3 workers saves a third: 90 steps of 1 s save 30 s, less than 2 x 16 s.
    assert saved_s(90, 1.0, 2, 3) == pytest.approx(30)
    assert not growth_pays(90, 1.0, 2, 3, restart_s=16, payback=2)
    assert growth_pays(90, 1.0, 2, 3, restart_s=14, payback=2)


def test_payback_zero_grows_whenever_there_is_room_and_nothing_left_never_pays() -> None:
    assert growth_pays(1, 0.2, 1, 2, restart_s=10, payback=0)
    assert not growth_pays(0, 0.2, 1, 2, restart_s=10, payback=0)
    assert saved_s(-5, 1.0, 1, 2) == 0  # past the end: nothing to save


def test_pace_scales_step_time_with_workers_and_counts_down_the_steps() -> None:
    pace = Pace(step_s=0.5, world_size=2, steps_left=100, restart_s=12.0, at=1000.0)
    assert pace.step_on(1) == 1.0 and pace.step_on(4) == 0.25  # the global batch is fixed
    assert pace.steps_left_at(1010.0, 2) == 80  # 10 s at 0.5 s a step


def test_pace_from_the_loop_report() -> None:
    report = CheckpointReport(
        step=40, loss=2.0, samples=640, step_s=0.5, world_size=2, steps_left=80, restart_s=9.5
    )
    assert Pace.from_report(report, at=5.0) == Pace(0.5, 2, 80, 9.5, 5.0)


def test_policy_says_once_why_it_stays_not_at_every_resize_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resize check runs every `scaling.resize_check_s`; the controller log should say
    once why the job does not grow."""
    import logging
    import time

    from ray.train import ScalingConfig

    from spotray.elastic import recovery

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(recovery.logger, "handlers", [handler])
    monkeypatch.setattr(recovery.logger, "level", logging.INFO)
    # 50 steps of 0.2 s left: 5 s saved against 2 restarts of 10 s.
    pace = Pace(step_s=0.2, world_size=1, steps_left=50, restart_s=10.0, at=time.monotonic())
    monkeypatch.setattr(recovery, "_pace", pace)
    policy = recovery.FreshElasticPolicy(ScalingConfig(num_workers=(1, 2)))
    assert [policy._growth_pays(1, 2) for _ in range(5)] == [False] * 5
    assert len(said) == 1 and "room for 2 workers, staying on 1: 5 s saved" in said[0]


def test_policy_weighs_capacity_that_came_back_once_without_waiting_for_the_check() -> None:
    """A node joining a running job is weighed at the controller's next poll, not up to
    `resize_check_s` later; the same capacity is not weighed again at every poll."""
    from ray.train import ScalingConfig

    from spotray.elastic.recovery import FreshElasticPolicy

    policy = FreshElasticPolicy(ScalingConfig(num_workers=(1, 3), resources_per_worker={"CPU": 1}))
    cluster = {"a": {"CPU": 1.0}}
    policy.reserved_resources = lambda: cluster  # type: ignore[method-assign]
    assert policy._capacity_came_back(1) == 0  # what the job runs on
    cluster["b"] = {"CPU": 1.0}
    assert policy._capacity_came_back(1) == 2  # a node joined: weigh 2 workers now
    assert policy._capacity_came_back(1) == 0  # seen (growth did not pay): the check decides
    cluster["c"] = {"CPU": 1.0}
    assert policy._capacity_came_back(1) == 3  # more came back
    del cluster["b"], cluster["c"]
    assert policy._capacity_came_back(1) == 0  # gone again: nothing to weigh
    cluster["b"] = {"CPU": 1.0}
    assert policy._capacity_came_back(1) == 2  # back once more
