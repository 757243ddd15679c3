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


def test_goodput_counts_each_surviving_step_once() -> None:
    # Steps 1-3, a restart at t=10 back to the checkpoint at step 2, then steps 3 and 4.
    # Surviving: 1 and 2 of the first run, 3 and 4 of the second. Measured: step 2 took
    # 1.0 s, step 4 1.5 s; steps that open a run (1, and 3 again) count at their median.
    report = {
        "hub_events": [{"kind": "start", "time": 0.0}, {"kind": "start", "time": 10.0}],
        "steps": [(1.0, 1), (2.0, 2), (3.0, 3), (11.0, 3), (12.5, 4)],
        "final_step": 4,
        "wall_s": 12.0,
    }
    assert load_bench().goodput(report) == (1.25 + 1.0 + 1.25 + 1.5) / 12.0
