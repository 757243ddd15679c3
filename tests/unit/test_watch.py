"""The notice policy, stepped with scripted metadata answers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from spotray.spot.imds import RebalanceHint, SpotNotice
from spotray.spot.watch import Drain, NoticePolicy, RebalanceAction, RequestCheckpoint

T = datetime(2026, 11, 26, 18, 22, tzinfo=timezone.utc)


def test_a_notice_drains_once_with_its_time_as_deadline() -> None:
    policy = NoticePolicy()
    notice = SpotNotice("terminate", T)
    [action] = policy.decide(notice, None)
    assert action.kind == "spot-interruption"
    assert action.decision == Drain(int(T.timestamp() * 1000), f"spot terminate at {T.isoformat()}")
    policy.handled(action)
    assert policy.decide(notice, None) == []  # the same notice again: nothing new


def test_an_action_not_carried_out_is_decided_again() -> None:
    policy = NoticePolicy()
    notice = SpotNotice("terminate", T)
    assert policy.decide(notice, None)
    assert policy.decide(notice, None)  # never marked handled (say, the GCS was down)


def test_a_new_notice_time_is_a_new_notice() -> None:
    policy = NoticePolicy()
    for action in policy.decide(SpotNotice("stop", T), None):
        policy.handled(action)
    [again] = policy.decide(SpotNotice("stop", T + timedelta(minutes=5)), None)
    assert isinstance(again.decision, Drain)


def test_nothing_announced_decides_nothing() -> None:
    assert NoticePolicy().decide(None, None) == []


def test_rebalance_hint_by_setting() -> None:
    hint = RebalanceHint(T)
    [a] = NoticePolicy().decide(None, hint)
    assert isinstance(a.decision, RequestCheckpoint)  # the default: checkpoint, keep the node
    [b] = NoticePolicy(RebalanceAction.DRAIN).decide(None, hint)
    assert b.decision == Drain(0, b.decision.reason)  # drain, no deadline
    [c] = NoticePolicy(RebalanceAction.IGNORE).decide(None, hint)
    assert c.decision is None


def test_watch_with_nothing_to_connect_to_says_so_and_stops_at_sigterm(tmp_path) -> None:
    """No GCS and no IMDS: a spotray line naming what it waits for, and exit within 3 s of SIGTERM."""
    import signal
    import subprocess
    import time

    from tests.conftest import SPOTRAY, free_port, spotray_env

    gcs = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [*SPOTRAY, "watch", "--address", gcs, "--imds-url", f"http://127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=spotray_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()  # the first thing it logs
        assert f"cannot reach the Ray GCS at {gcs}" in line, line
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - sent < 3
        assert proc.returncode == 0
    finally:
        proc.kill()


class RecordingNode:
    """What the watcher does to its Ray node, written down instead of done."""

    node_id = "node-1"

    def __init__(self) -> None:
        self.drains: list[Drain] = []
        self.records: list[object] = []

    def drain(self, decision: Drain) -> None:
        self.drains.append(decision)

    def request_checkpoint(self, decision: RequestCheckpoint) -> None:
        raise AssertionError("no rebalance hint was readable")

    def record(self, record: object) -> None:
        self.records.append(record)


def test_a_notice_is_acted_on_while_the_rebalance_answer_is_garbage() -> None:
    """The notice path depends on nothing else that can fail: a garbled rebalance answer and
    a missing instance id are logged, the notice drains the node in the same round."""
    from spotray.chaos.imds_server import FakeIMDS
    from spotray.spot.imds import INSTANCE_ID_PATH, REBALANCE_PATH, IMDSClient
    from spotray.spot.watch import Watcher

    with FakeIMDS() as imds:
        imds.serve_garbage(REBALANCE_PATH, "<html>busy")
        imds.clear(INSTANCE_ID_PATH)
        at = imds.serve_notice(lead_s=120).replace(microsecond=0)  # IMDS times are in seconds
        node = RecordingNode()
        watcher = Watcher(IMDSClient(imds.url), node, NoticePolicy())  # type: ignore[arg-type]
        [record] = watcher.poll_once()
    assert node.drains == [Drain(int(at.timestamp() * 1000), f"spot terminate at {at.isoformat()}")]
    assert record.kind == "spot-interruption" and record.handled == "drained" and record.instance_id is None


def test_a_notice_with_a_null_time_is_retried_not_fatal() -> None:
    from spotray.chaos.imds_server import FakeIMDS
    from spotray.spot.imds import INSTANCE_ACTION_PATH, IMDSClient
    from spotray.spot.watch import Watcher

    with FakeIMDS() as imds:
        imds.serve_garbage(INSTANCE_ACTION_PATH, '{"action": "terminate", "time": null}')
        node = RecordingNode()
        watcher = Watcher(IMDSClient(imds.url), node, NoticePolicy())  # type: ignore[arg-type]
        assert watcher.poll_once() == []  # logged, and tried again next round
        at = imds.serve_notice(lead_s=60).replace(microsecond=0)
        [record] = watcher.poll_once()
    assert record.deadline == at.isoformat() and len(node.drains) == 1
