"""The spot simulator on tiny hand-made traces, against values worked out by hand.

Ticks of 100 s; a step takes 10 s on 2 workers (20 s on 1); a restart costs 20 s; spot
$1/h, on-demand $3.6/h per node. The arithmetic is in the comments.
"""

from __future__ import annotations

import pytest

from spotray.spot.simulator import Job, Trace, simulate

TRACE = Trace(100.0, [2, 2, 1, 1, 2, 2, 2, 2])
JOB = Job(workers=2, steps=30, step_s=10.0, restart_s=20.0, min_workers=1, checkpoint_every=5,
          spot_price=1.0, on_demand_price=3.6)  # fmt: skip


def test_fixed_waits_for_all_workers() -> None:
    r = simulate("fixed", JOB, TRACE)
    # 0-100: restart 20 + 80 s -> 8 steps; 100-200: 18; 200-400 one node short: wait (the
    # notice became a checkpoint at 18); 400-500: restart + 8 -> 26; 4 steps more by 540.
    assert r.finished and r.completion_s == 540
    assert r.spot_node_s == 2 * (100 + 100 + 100 + 40)
    assert r.useful_node_s == 2 * (80 + 100 + 80 + 40)
    assert r.goodput() == pytest.approx(600 / 680)
    assert r.spot_usd(JOB) == pytest.approx(680 / 3600)


def test_elastic_shrinks_and_grows_only_when_it_pays() -> None:
    r = simulate("elastic", JOB, TRACE)
    # 200-300 on 1 worker: restart 20 + 80 s at 20 s/step -> 22; 300-400: 27. At 400 two are
    # back, but 3 steps left save 3 x 20 x (1 - 1/2) = 30 s < 2 restarts (40 s): stay on 1,
    # done at 460.
    assert r.finished and r.completion_s == 460
    assert r.spot_node_s == 2 * 200 + 100 + 100 + 60
    assert [w for _, w, _, _ in r.timeline[:5]] == [2, 2, 1, 1, 1]


def test_elastic_grow_checkpoints_first_with_spotray() -> None:
    r = simulate("elastic", Job(**{**JOB.__dict__, "steps": 60}), TRACE)
    # As above to 27 at 400. Then 33 steps left save 33 x 10 s = 330 s > 40: grow, from a
    # checkpoint asked for at 27 (nothing lost). 400-500: restart + 8 -> 35; then 10 a tick:
    # 45, 55, and 5 more steps (50 s) by 750.
    assert r.finished and r.completion_s == 750
    assert r.useful_node_s == 60 * 10 * 2
    assert r.spot_node_s == 2 * 200 + 100 + 100 + 2 * (100 + 100 + 100 + 50)


def test_elastic_grow_without_spotray_restarts_from_the_last_periodic_checkpoint() -> None:
    r = simulate("elastic", Job(**{**JOB.__dict__, "steps": 60, "spotray": False}), TRACE)
    # Lost at 200 with 18 done: back to 15. 200-300 on 1: restart + 4 -> 19; 300-400: 24. At
    # 400, 36 left save 360 s > 40: grow, back to the periodic checkpoint at 20 (4 lost).
    # 400-500: restart + 8 -> 28; 38, 48, 58, and 2 more steps (20 s) by 820.
    assert r.finished and r.completion_s == 820
    assert r.useful_node_s == 60 * 10 * 2  # lost steps are not useful work
    assert r.spot_node_s == 2 * 200 + 100 + 100 + 2 * (100 + 100 + 100 + 100 + 20)


def test_fallback_runs_on_demand_after_the_wait_and_goes_back_to_spot() -> None:
    job = Job(**{**JOB.__dict__, "min_workers": 2, "fallback_wait_s": 100.0})
    r = simulate("fallback", job, Trace(100.0, [2, 0, 0, 0, 2, 2]))
    # 0-100 spot: 8 steps. 100-200 no spot: wait (starved 100 s). 200-300 on demand: restart
    # + 8 -> 16; 300-400: 26. At 400 spot is back: checkpoint at 26, restart, 4 steps in
    # 40 s, done at 460.
    assert r.finished and r.completion_s == 460
    assert r.on_demand_node_s == 2 * 200
    assert r.spot_node_s == 2 * 100 + 2 * 60
    assert r.on_demand_usd(job) == pytest.approx(400 / 3600 * 3.6)
    assert [m for _, _, _, m in r.timeline[:5]] == ["spot", "none", "on-demand", "on-demand", "spot"]


def test_on_demand_is_never_preempted() -> None:
    r = simulate("on-demand", JOB, TRACE)
    assert r.finished and r.completion_s == 320  # restart 20 + 300 s of steps
    assert r.on_demand_node_s == 640 and r.spot_node_s == 0


def test_unannounced_loss_goes_back_to_the_periodic_checkpoint() -> None:
    r = simulate("fixed", Job(**{**JOB.__dict__, "spotray": False}), TRACE)
    # Lost at 200 with 18 steps done and a checkpoint at 15: 3 steps to redo, 30 s more.
    assert r.completion_s == 570
    assert r.useful_node_s == 600


def test_bad_policy_names_the_good_ones() -> None:
    with pytest.raises(ValueError, match="fixed, elastic, fallback, on-demand"):
        simulate("cheap", JOB, TRACE)
