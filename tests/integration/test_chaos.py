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
from tests.integration.conftest import STEPS, assert_bit_identical, final_state

pytestmark = pytest.mark.integration


def chaos(tmp_path: Path, update: dict, *events: str, lead_s: float = 6.0, slow_storage_s: float = 0) -> dict:
    config = write_config(tmp_path, update)
    args = ["chaos", str(config), "--nodes", "3", "--lead-s", str(lead_s), "--report", "report.json"]
    args += ["--slow-storage-s", str(slow_storage_s)]
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


def test_unannounced_kill_resumes_from_the_newest_checkpoint(reference, tmp_path: Path) -> None:
    report = chaos(tmp_path, {"failure": {"max_failures": 1}}, "50:unannounced")
    assert report["final_step"] == STEPS
    [event] = report["events"]
    assert event["step_at_notice"] is None
    assert event["checkpoint_before_kill"] == 40  # interval 20, killed past step 50
    assert event["resumed_step"] == 40
    assert event["steps_lost"] == event["step_at_kill"] - 40
    assert_bit_identical(final_state(tmp_path), final_state(reference[0]))
