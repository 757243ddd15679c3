"""The typed messages between the loop, the driver and the controller survive their channels."""

from __future__ import annotations

import json

from spotray.runtime import messages as msg


def test_a_checkpoint_report_goes_through_ray_metrics_and_back() -> None:
    report = msg.CheckpointReport(40, 2.0, 640, 0.5, 2, 80, 9.5, answers_request=123.0)
    assert msg.CheckpointReport.from_metrics(report.as_metrics()) == report
    plain = msg.CheckpointReport(40, 2.0, 640, 0.5, 2, 80, 9.5)
    assert "answers_request" not in plain.as_metrics()
    assert msg.CheckpointReport.from_metrics(plain.as_metrics()) == plain


def test_reports_that_are_not_checkpoint_reports_are_none() -> None:
    metrics = msg.CheckpointReport(40, 2.0, 640, 0.5, 2, 80, 9.5).as_metrics()
    assert msg.CheckpointReport.from_metrics({"step": 40, "loss": 2.0}) is None  # a registration
    assert msg.CheckpointReport.from_metrics({**metrics, "restart_s": None}) is None
    assert msg.CheckpointReport.from_metrics({**metrics, "step_s": float("nan")}) is None
    assert msg.CheckpointReport.from_metrics(None) is None


def test_a_checkpoint_request_round_trips_and_garbage_is_none() -> None:
    request = msg.CheckpointRequest(5.0, "rebalance", "node-1")
    assert msg.CheckpointRequest.decode(request.encode()) == request
    assert msg.CheckpointRequest.decode(None) is None
    assert msg.CheckpointRequest.decode(b"not json") is None
    assert msg.CheckpointRequest.decode(b'{"when": 1}') is None


def test_events_become_json_with_their_kind() -> None:
    event = msg.Noticed(step=41, deadline_ms=1.0, nodes=["a"], writing=True, time=3.0)
    assert json.loads(json.dumps(event.as_json())) == {
        "kind": "notice",
        "step": 41,
        "deadline_ms": 1.0,
        "nodes": ["a"],
        "writing": True,
        "time": 3.0,
    }
