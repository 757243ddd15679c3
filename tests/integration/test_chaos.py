"""Preemptions on a real 3-node local Ray cluster, each node with its loopback IMDS and watcher.

`spotray chaos` runs the whole thing (cluster, watchers, job, schedule) as a user would;
its JSON report and the final checkpoint are what the tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotray.cost.ledger import Ledger
from tests.conftest import run_spotray, spotray_env, write_config
from tests.integration.conftest import STEPS, assert_bit_identical, assert_same_trajectory, final_state

pytestmark = pytest.mark.integration


def chaos(
    tmp_path: Path, update: dict, *events: str, nodes: int = 3, replace: bool = True, **slow: float
) -> dict:
    """`spotray chaos`; `slow`: lead_s, slow_storage_s, slow_step_s."""
    config = write_config(tmp_path, update)
    args = ["chaos", str(config), "--nodes", str(nodes), "--report", "report.json"]
    args += ["--replace" if replace else "--no-replace", "--lead-s", str(slow.get("lead_s", 6.0))]
    args += [
        "--slow-storage-s",
        str(slow.get("slow_storage_s", 0)),
        "--slow-step-s",
        str(slow.get("slow_step_s", 0)),
    ]
    for event in events:
        args += ["--event", event]
    env = spotray_env(SPOTRAY_LEDGER=str(tmp_path / "ledger.db"))
    result = run_spotray(args, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((tmp_path / "report.json").read_text())


def test_announced_preemptions_lose_no_step_and_are_not_failures(reference, tmp_path: Path) -> None:
    """One node, then two at once, with max_failures=0: preemptions have their own budget.

    Storage is slow (every checkpoint write takes 4 s longer) and the first notice comes
    right after the step-40 write began: the loop finishes and commits that write, then
    checkpoints the step it has reached, all before the deadline.
    """
    update = {"failure": {"max_failures": 0}}
    report = chaos(tmp_path, update, "41:announced", "80:announced:2", lead_s=14.0, slow_storage_s=4.0)
    assert report["final_step"] == STEPS
    assert report["restarts"] == 2
    first, second = report["events"]
    assert first["writing_at_notice"] is True, first  # the notice really came mid-write
    assert len(second["nodes"]) == 2
    for event in (first, second):
        assert event["step_at_notice"] is not None  # the loop saw the notice before the kill
        assert event["steps_lost"] == 0, event
        assert event["resumed_step"] == event["checkpoint_before_kill"]
    assert first["resumed_step"] > 40
    # Same world size all along: the same parameters as the uninterrupted run, bit for bit.
    assert_bit_identical(final_state(tmp_path), final_state(reference[0]))
    # The cost ledger has what the bill needs: the restarts, the checkpoints, the 3 notices.
    with Ledger(tmp_path / "ledger.db") as ledger:
        events = ledger.run_events(run="t")
        assert [e.kind for e in events].count("start") == 3
        assert {e.step for e in events if e.kind == "checkpoint"} >= {first["resumed_step"], STEPS}
        assert [action for _, action, _, _ in ledger.notices()] == ["terminate"] * 3


def test_elastic_job_follows_capacity_down_to_nothing_and_back(reference, tmp_path: Path) -> None:
    """2 workers -> 1 (a node killed without notice) -> 0 (the last one announced and gone:
    the job waits) -> 2 (capacity back), in one run, with no replacement nodes.

    Every resize restarts the worker group from the newest complete checkpoint, and the data
    order and global batch do not depend on the world size, so the run ends where the
    uninterrupted 2-worker run does, within the tolerance of the 1-worker test (1 and 2
    workers cut the batch into the same micro-batches). A repeated or skipped step would
    move the weights by ~1e-2. Steps take 0.1 s (a bigger model) so that the schedule lands
    while the run trains.
    """
    update = {"scaling": {"min_workers": 1, "max_workers": 2}, "failure": {"max_failures": 1}}
    events = ("30:unannounced", "60:announced", "60:add:2")
    report = chaos(tmp_path, update, *events, nodes=2, replace=False, slow_step_s=0.1)
    assert report["final_step"] == STEPS
    lost, gone, back = report["events"]
    # Unannounced: resumed from the newest complete checkpoint, on the node left.
    assert lost["step_at_notice"] is None and lost["checkpoint_before_kill"] == 20  # interval 20
    assert lost["resumed_step"] == 20 and lost["workers_after"] == 1
    assert lost["steps_lost"] == lost["step_at_kill"] - 20
    # The last node announced and gone: nothing lost, no failure, the job waited for nodes.
    assert gone["steps_lost"] == 0 and gone["resumed_step"] == gone["checkpoint_before_kill"] > 60
    assert back["workers_after"] == gone["workers_after"] >= 1  # it starts on the first node back
    assert_same_trajectory(final_state(tmp_path), final_state(reference[0]))
