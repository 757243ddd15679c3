"""The head-to-head benchmark's goodput, on a hand-made run (scripts/bench_preemption.py)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def load_bench():  # a script, not a package module
    spec = importlib.util.spec_from_file_location(
        "bench_preemption", REPO / "scripts" / "bench_preemption.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pace_leaves_out_each_groups_first_step() -> None:
    # Steps 1-3, a restart at t=10 back to the checkpoint at step 2, then steps 3 and 4.
    # From one step to the next of the same group: 1.0 (2), 1.0 (3), 1.5 (4); step 3 again
    # (t=11) includes the restart and is left out.
    report = {
        "hub_events": [
            {"kind": "start", "time": 0.0, "step": 0, "world_size": 2},
            {"kind": "start", "time": 10.0, "step": 2, "world_size": 2},
        ],
        "steps": [(1.0, 1), (2.0, 2), (3.0, 3), (11.0, 3), (12.5, 4)],
    }
    assert load_bench().pace(report) == 1.0


def test_goodput_counts_the_jobs_steps_at_its_full_pace() -> None:
    # 4 steps that take 1 s each on the full size: whatever the run spent on them (a redone
    # step, slower steps on fewer workers), the job needed 4 s of its 12 s wall.
    report = {"final_step": 4, "wall_s": 12.0}
    assert load_bench().goodput(report, 1.0) == 4.0 / 12.0
