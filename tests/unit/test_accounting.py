"""Seconds lost per event, on timelines built step by step: every restart an event causes counts."""

from __future__ import annotations

import pytest

from spotray.chaos.accounting import (
    GroupStart,
    RestartPhases,
    event_costs,
    full_pace_s,
    restart_phases,
    restart_s,
)


def _train(steps: list[tuple[float, int]], t0: float, from_step: int, to_step: int, step_s: float) -> None:
    steps.extend((round(t0 + step_s * (k - from_step), 6), k) for k in range(from_step + 1, to_step + 1))


def announced_with_two_restarts() -> tuple[list[tuple[float, int]], list[GroupStart]]:
    """2 workers at 0.2 s a step; the notice at t=10 (step 50); training on to the deadline
    (step 70, checkpointed, t=14); the node goes; 1 worker from t=19 at half pace to step 85;
    then a second restart, onto the replacement, from the checkpoint at step 80 (t=27)."""
    steps: list[tuple[float, int]] = []
    _train(steps, 0.0, 0, 70, 0.2)
    _train(steps, 19.0, 70, 85, 0.4)
    _train(steps, 27.0, 80, 130, 0.2)
    starts = [GroupStart(0.0, 0, 2), GroupStart(19.0, 70, 1), GroupStart(27.0, 80, 2)]
    return steps, starts


def test_an_event_that_restarts_twice_counts_both_restarts() -> None:
    steps, starts = announced_with_two_restarts()
    pace = full_pace_s(steps, starts)
    assert pace == pytest.approx(0.2)
    (cost,) = event_costs(steps, starts, begins=[10.0], step_s=pace)
    assert cost.restarts == 2
    assert cost.steps_redone == 5  # 81..85, trained on one worker, again on two
    # 5 s from the kill to the first group, 15 steps at half pace (3 s more), 2 s to the
    # second group, 5 steps redone (1 s): 11 s, of which the first restart alone is 5.4 s.
    assert cost.seconds_lost == pytest.approx(5 + 3 + 2 + 1, abs=0.01)
    # Each restart alone: last step to the new group's first (5.4 s, then 2.2 s).
    assert restart_s(steps, starts) == pytest.approx([5.4, 2.2])
    assert cost.seconds_lost > sum(restart_s(steps, starts))


def test_each_event_owns_the_time_until_the_next_one() -> None:
    steps, starts = announced_with_two_restarts()
    # The same timeline read as two events: the notice, and the replacement joining at t=25.
    first, second = event_costs(steps, starts, begins=[10.0, 25.0], step_s=0.2)
    assert (first.restarts, second.restarts) == (1, 1)
    assert first.seconds_lost == pytest.approx(5 + 3, abs=0.01)
    assert second.seconds_lost == pytest.approx(2 + 1, abs=0.01)


def test_an_event_that_costs_nothing_costs_zero() -> None:
    steps: list[tuple[float, int]] = []
    _train(steps, 0.0, 0, 100, 0.2)
    (cost,) = event_costs(steps, [GroupStart(0.0, 0, 2)], begins=[5.0], step_s=0.2)
    assert (cost.seconds_lost, cost.restarts, cost.steps_redone) == (0.0, 0, 0)


def test_a_restart_is_taken_apart_into_its_phases() -> None:
    steps, _ = announced_with_two_restarts()
    # The first restart's processes were born 2 s after the kill and in the loop 1.5 s later;
    # the second start says nothing of its phases (an older loop): left out, not guessed.
    starts = [
        GroupStart(0.0, 0, 2),
        GroupStart(19.0, 70, 1, born=16.0, entered=17.5),
        GroupStart(27.0, 80, 2),
    ]
    (phases,) = restart_phases(steps, starts)
    assert phases == RestartPhases(to_new_workers=2.0, set_up=1.5, restore=1.5, first_step=0.4)
    assert phases.total == pytest.approx(restart_s(steps, starts)[0])


def test_no_events_no_costs() -> None:
    steps: list[tuple[float, int]] = []
    _train(steps, 0.0, 0, 10, 0.2)
    assert event_costs(steps, [GroupStart(0.0, 0, 2)], begins=[], step_s=0.2) == []
