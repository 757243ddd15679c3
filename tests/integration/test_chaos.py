"""Preemptions on a real 3-node local Ray cluster, each node with its loopback IMDS and watcher.

`spotray chaos` runs the whole thing (cluster, watchers, job, schedule) as a user would;
its JSON report and the final checkpoint are what the tests check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from spotray.cost.ledger import Ledger
from tests.conftest import run_spotray, spotray_env, write_config
from tests.integration.conftest import STEPS, assert_bit_identical, assert_same_trajectory, final_state

pytestmark = pytest.mark.integration


def chaos(
    tmp_path: Path, update: dict, *events: str, nodes: int = 3, replace: bool = True, **slow: float
) -> dict:
    """`spotray chaos`; `slow`: lead_s, slow_storage_s, slow_upload_s, slow_step_s."""
    config = write_config(tmp_path, update)
    args = ["chaos", str(config), "--nodes", str(nodes), "--report", "report.json"]
    args += ["--replace" if replace else "--no-replace", "--lead-s", str(slow.get("lead_s", 6.0))]
    args += [
        "--slow-storage-s",
        str(slow.get("slow_storage_s", 0)),
        "--slow-upload-s",
        str(slow.get("slow_upload_s", 0)),
        "--slow-step-s",
        str(slow.get("slow_step_s", 0)),
    ]
    for event in events:
        args += ["--event", event]
    env = spotray_env(SPOTRAY_LEDGER=str(tmp_path / "ledger.db"))
    result = run_spotray(args, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The kills are chaos's own: Ray's raylet-died reports stay in the nodes' logs.
    assert "Raylet is terminated" not in result.stdout + result.stderr
    return json.loads((tmp_path / "report.json").read_text())


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_announced_preemptions_lose_no_step_and_are_not_failures(reference, tmp_path: Path) -> None:
    """One node, then two at once, with max_failures=0: preemptions have their own budget,
    also when the loop ends its group before the deadline (spotray.runtime.preemption).

    Storage is slow (every checkpoint write takes 6 s longer) and the first notice comes
    right after the step-40 write began: the loop finishes and commits that write, then
    checkpoints the step it has reached, all before the deadline. Writes that slow make
    that checkpoint the last one (spotray.runtime.preemption's guard exceeds what is left
    of the lead), and the 22 s lead holds both writes also on a machine twice as busy as an
    idle 2-core one, where the nodes that replace the preempted ones start on the same
    cores. Steps take 0.35 s so that the run outlasts each lead.
    """
    # The config's own run exists (a copy of the reference's): chaos must leave it byte-identical.
    shutil.copytree(reference[0] / "runs" / "t", tmp_path / "runs" / "t")
    before = files_of(tmp_path / "runs" / "t")
    update = {"failure": {"max_failures": 0}}
    events = ("41:announced", "60:announced:2")
    report = chaos(tmp_path, update, *events, lead_s=22.0, slow_storage_s=6.0, slow_step_s=0.35)
    assert files_of(tmp_path / "runs" / "t") == before
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
    # One restart per preemption (the replacement joined before the deadline), each one
    # counted in the seconds its event lost.
    assert [e["restarts"] for e in report["events"]] == [1, 1]
    assert all(e["seconds_lost"] > 0 for e in report["events"]), report["events"]
    # The first group ended as soon as its last checkpoint was registered, the replacement
    # there: that restart ran during the notice's lead, not after the kill. (The second
    # notice's last checkpoint may be registered too late for it.)
    handovers = [e for e in report["hub_events"] if e["kind"] == "handover"]
    assert handovers and handovers[0]["step"] == first["resumed_step"], handovers
    assert first["notice_served"] < handovers[0]["time"] < first["kill_time"], (first, handovers)
    # The restarts ran on warm spares (idle, imports done, when taken) where a node had had
    # time to warm one, which the first start could not. (Those on replacements that joined
    # at the notice are often still importing on two cores.)
    starts = [e for e in report["hub_events"] if e["kind"] == "start"]
    assert not any(starts[0]["warm"]) and any(any(s["warm"]) for s in starts[1:]), starts
    # Same world size all along: the same parameters as the uninterrupted run, bit for bit,
    # although the spares imported torch before Ray set their thread count.
    assert_bit_identical(final_state(tmp_path, run="t-chaos"), final_state(reference[0]))
    # The cost ledger has what the bill needs: the restarts, the checkpoints, the 3 notices.
    with Ledger(tmp_path / "ledger.db") as ledger:
        events = ledger.run_events(run="t-chaos")
        assert [e.kind for e in events].count("start") == 3
        assert {e.step for e in events if e.kind == "checkpoint"} >= {first["resumed_step"], STEPS}
        assert [action for _, action, _, _ in ledger.notices()] == ["terminate"] * 3


def test_the_last_checkpoint_before_a_deadline_leaves_time_for_its_upload(reference, tmp_path: Path) -> None:
    """Writes are quick but every upload to storage takes 5 s (a slow bucket), one at a time,
    and the notice leaves 20 s. A guard of a poll, a step and a write would take the last
    checkpoint 3 s before the deadline, whose upload ends 2 s after it: the steps since the
    one before are lost. Counting the uploads still ahead and its own, the last checkpoint is
    taken at once after the notice, and is in storage and handed over before the deadline."""
    report = chaos(tmp_path, {}, "30:announced", lead_s=20.0, slow_upload_s=5.0, slow_step_s=0.3)
    assert report["final_step"] == STEPS
    (event,) = report["events"]
    assert event["step_at_notice"] is not None
    assert event["steps_lost"] == 0, event
    assert event["resumed_step"] == event["checkpoint_before_kill"] >= event["step_at_notice"]
    handovers = [e for e in report["hub_events"] if e["kind"] == "handover"]
    assert handovers and handovers[0]["step"] == event["resumed_step"], handovers
    assert event["notice_served"] < handovers[0]["time"] < event["kill_time"], (event, handovers)
    assert_bit_identical(final_state(tmp_path, run="t-chaos"), final_state(reference[0]))


# Global batch 24 in micro-batches of 4: every world size of 1..3 workers cuts it into the
# same micro-batches, so runs on any of them agree up to float summation order (conftest).
ELASTIC = {"optimizer": {"global_batch_size": 24, "micro_batch_size": 4, "steps": 100}}


def test_elastic_job_shrinks_grows_loses_everything_and_comes_back(tmp_path: Path) -> None:
    """3 workers -> 2 (a node killed without notice) -> 3 (a node added: the job grows) ->
    0 (every node announced and gone: the job waits) -> 1 (a node back), in one run.

    Every resize restarts the worker group from the newest complete checkpoint; the data
    order and the global batch do not depend on the world size, so the run must end where an
    uninterrupted 3-worker run does (within 2e-5, weights and AdamW's moments; a repeated or
    skipped step moves weights by ~1e-2), and each worker group must start at the step after
    the checkpoint it resumed.
    Steps take 0.2 s (a bigger model) so that the schedule lands while the run trains.
    """
    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    fixed = {**ELASTIC, "scaling": {"min_workers": 3, "max_workers": 3}}
    done = run_spotray(["train", str(write_config(uninterrupted, fixed))], cwd=uninterrupted)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    update = {
        **ELASTIC,
        # 0: grow whenever there is room. This 20 s run is too short for any growth to pay
        # for two restarts (spotray.elastic.growth); the next test checks that rule. Ray's resize
        # check stays at its 60 s, longer than the run: the growth must come from spotray
        # weighing the added node as soon as it is seen.
        "scaling": {"min_workers": 1, "max_workers": 3, "grow_payback_restarts": 0},
        "failure": {"max_failures": 1},  # the unannounced kill; preemptions are not failures
    }
    events = ("25:unannounced", "50:add", "75:announced:3", "75:add")
    report = chaos(tmp_path, update, *events, nodes=3, replace=False, slow_step_s=0.2, lead_s=3.0)
    assert report["final_step"] == 100
    shrink, grow, gone, back = report["events"]
    # Unannounced: resumed on the 2 nodes left, from the newest complete checkpoint.
    assert shrink["step_at_notice"] is None and shrink["workers_after"] == 2
    assert shrink["resumed_step"] == shrink["checkpoint_before_kill"] == 20  # interval 20
    # Capacity back: the running job grew onto the new node, from a checkpoint it asked for
    # then, so growing redid fewer steps than a checkpoint interval.
    assert grow["workers_after"] == 3 and grow["resumed_step"] >= 50
    assert grow["steps_lost"] is not None and grow["steps_lost"] < 20, grow
    # Every node announced and gone: nothing lost, no failure; the job waited for a node.
    assert len(gone["nodes"]) == 3 and gone["steps_lost"] == 0
    # (A checkpoint may commit in the instant of the kill, after the report looked: newer.)
    assert gone["resumed_step"] >= gone["checkpoint_before_kill"] >= 75
    assert back["workers_after"] == gone["workers_after"] == 1
    # Every restart is some event's, counted in the seconds it lost.
    assert sum(e["restarts"] for e in report["events"]) == report["restarts"]
    assert shrink["restarts"] == grow["restarts"] == 1 and shrink["seconds_lost"] > 0
    # The data order: each worker group's first step is the one after its checkpoint.
    starts = [e for e in report["hub_events"] if e["kind"] == "start"]
    assert [e["world_size"] for e in starts] == [3, 2, 3, 1]
    for start in starts:
        first = min((t, step) for t, step in report["steps"] if t >= start["time"])
        assert first[1] == start["step"] + 1, (start, first)
    assert_same_trajectory(final_state(tmp_path, 100, run="t-chaos"), final_state(uninterrupted, 100))


def test_elastic_job_near_its_end_does_not_grow(tmp_path: Path) -> None:
    """A node joins with 50 steps of 0.2 s left on one worker: a second worker would save
    ~5 s, less than the two restarts (~10 s each here, as the loop measures its own start)
    that the default rule asks growth to pay for, so the job finishes on one worker.
    With `grow_payback_restarts: 0` the same run grows within a resize check (1 s)."""
    update = {
        **ELASTIC,
        "optimizer": {**ELASTIC["optimizer"], "steps": 100},
        "scaling": {"min_workers": 1, "max_workers": 2, "resize_check_s": 1},
    }
    # 0.1 s a step on 2 workers: 0.2 s on the one it runs on.
    report = chaos(tmp_path, update, "50:add", nodes=1, replace=False, slow_step_s=0.1)
    assert report["final_step"] == 100 and report["restarts"] == 0
    (added,) = report["events"]
    assert added["workers_after"] == 1 and added["resumed_step"] is None
    assert [e["world_size"] for e in report["hub_events"] if e["kind"] == "start"] == [1]


def test_elastic_job_grows_back_onto_the_replacement_that_joined_while_it_restarted(tmp_path: Path) -> None:
    """A notice, and a replacement that joins at the notice (as Ray's autoscaler replaces a
    drained node) but is usually not counted by the deadline 1 s later (4 of 6 runs here):
    the group restarts on the node left and, when it is up a few seconds later, the
    replacement is there. The policy weighs it at once and asks for a checkpoint before the
    new loop has begun: the loop must answer that request (it is newer than the loop's
    process), so that the job grows back from that checkpoint, fewer steps redone than a
    checkpoint interval, instead of waiting out the policy's 60 s for an answer (longer than
    this run) and growing from the last periodic checkpoint. When the replacement is counted
    at the deadline, the job must restart once, onto both nodes. (A 1 s
    lead is shorter than the notice's way to a checkpoint at times: steps lost to it are not
    what this test is about.)
    Steps take 0.2 s on 2 workers and 0.4 s on one."""
    update = {
        **ELASTIC,
        "optimizer": {**ELASTIC["optimizer"], "steps": 150},
        "scaling": {"min_workers": 1, "max_workers": 2, "grow_payback_restarts": 0},
    }
    report = chaos(tmp_path, update, "25:announced", nodes=2, slow_step_s=0.2, lead_s=1.0)
    assert report["final_step"] == 150
    starts = [e for e in report["hub_events"] if e["kind"] == "start"]
    sizes = [e["world_size"] for e in starts]
    if sizes == [2, 2]:  # the replacement was counted at the deadline: one restart, onto both
        assert starts[1]["step"] >= 20, starts  # from the notice's checkpoint or the one before
    else:  # on the node left, then grown back from the checkpoint it asked for
        assert sizes == [2, 1, 2], starts
        shrunk, grown = starts[1:]
        reached = max(step for t, step in report["steps"] if t < grown["time"])
        assert grown["step"] > shrunk["step"] and reached - grown["step"] < 20, (shrunk, grown, reached)
    for start in starts:
        first = min((t, step) for t, step in report["steps"] if t >= start["time"])
        assert first[1] == start["step"] + 1, (start, first)
