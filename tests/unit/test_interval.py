"""The checkpoint interval policy, stepped with scripted measurements."""

from __future__ import annotations

import math

import pytest

from spotray.elastic.interval import (
    CONTROLLER_POLL_ENV,
    MAX_INTERVAL_S,
    RAY_REPORT_POLL_S,
    FixedInterval,
    Observation,
    YoungDalyInterval,
    policy_for,
    young_daly_seconds,
)
from spotray.elastic.registry import RAY_TRAIN_SETTINGS

HOUR = 3600.0


def obs(**kw: float) -> Observation:
    base = dict(step_s=0.5, stall_s=0.5, commit_s=1.0, failures=0, node_seconds=0.0, nodes=1)
    return Observation(**{**base, **kw})


def test_young_daly_formula() -> None:
    assert young_daly_seconds(2.0, 3600.0) == pytest.approx(120.0)  # sqrt(2*2*3600)


def test_prior_alone_gives_the_prior_interval() -> None:
    policy = YoungDalyInterval(prior_node_mtbf_s=2 * HOUR)
    # sqrt(2 * 0.5 s * 7200 s) = 84.85 s -> 170 steps of 0.5 s
    assert policy.interval_s(obs()) == pytest.approx(math.sqrt(7200.0))
    assert policy.next_interval(obs()) == 170


def test_more_nodes_and_failures_checkpoint_more_often() -> None:
    policy = YoungDalyInterval(prior_node_mtbf_s=2 * HOUR)
    base = policy.next_interval(obs())
    assert policy.next_interval(obs(nodes=8)) < base
    # 3 failures in 1 node-hour: node MTBF (2h + 1h) / 4 = 45 min
    assert policy.mtbf_s(obs(failures=3, node_seconds=HOUR)) == pytest.approx(0.75 * HOUR)
    assert policy.next_interval(obs(failures=3, node_seconds=HOUR)) < base


def test_floors_and_ceiling() -> None:
    policy = YoungDalyInterval(prior_node_mtbf_s=2 * HOUR)
    # A free checkpoint would mean "always": floored by the commit time and Ray's poll.
    assert policy.interval_s(obs(stall_s=0.0, commit_s=0.1)) == RAY_REPORT_POLL_S
    faster = YoungDalyInterval(prior_node_mtbf_s=2 * HOUR, report_poll_s=0.25)
    assert faster.interval_s(obs(stall_s=0.0, commit_s=0.1)) == 0.25
    assert policy.interval_s(obs(stall_s=0.0, commit_s=30.0)) == 30.0
    assert policy.interval_s(obs(stall_s=1000.0, node_seconds=1e9)) == MAX_INTERVAL_S


def test_before_any_measurement() -> None:
    assert YoungDalyInterval(prior_node_mtbf_s=HOUR).next_interval(None) == 20


def test_policy_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run in this process (`spotray train` sets Ray Train's settings in the environment)
    # leaves the controller's poll set: Ray's default is what this case expects.
    monkeypatch.delenv(CONTROLLER_POLL_ENV, raising=False)
    assert policy_for(50, 2.0) == FixedInterval(50)
    assert policy_for(50, 2.0).next_interval(obs()) == 50
    assert policy_for("auto", 2.0) == YoungDalyInterval(prior_node_mtbf_s=2 * HOUR)


def test_auto_is_floored_at_the_poll_ray_train_runs_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONTROLLER_POLL_ENV, RAY_TRAIN_SETTINGS[CONTROLLER_POLL_ENV])
    policy = policy_for("auto", 2.0)
    assert policy.interval_s(obs(stall_s=0.0, commit_s=0.1)) == 0.25  # spotray's runs poll at 0.25 s
