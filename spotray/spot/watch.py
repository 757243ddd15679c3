"""`spotray watch`: turns AWS spot interruption notices into Ray node drains.

Ray Train 2.60 reacts to a *drained* node (`ray.train.get_preemption_info()`, its own
preemption retry budget), but nothing on a self-managed cluster turns the AWS notice into a
drain: Ray's fault-tolerance guide leaves that watcher to you. This is it, one per worker
node, started by cluster.yaml next to `ray start`.

Policy apart from mechanism: `NoticePolicy` only decides (drain, ask for a checkpoint, or
nothing) from what IMDS says and what it already handled; `RayNode` carries the decision
out through the GCS (the same call as `ray drain-node`) and records it in the GCS's KV
store, where the cost ledger, `spotray status` and the training loop read it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, TypeVar

from spotray.ray_compat.node import drain_for_preemption, gcs_client, kv_put
from spotray.runtime.messages import CheckpointRequest
from spotray.spot.imds import IMDSClient, IMDSError, RebalanceHint, SpotNotice

logger = logging.getLogger("spotray.spot.watch")
T = TypeVar("T")

KV_NAMESPACE = b"spotray"
NOTICE_PREFIX = "notice/"  # notice/<node id>/<kind>/<notice time>: one JSON record each
DEFAULT_INTERVAL_S = 1.0  # AWS posts the notice 2 min ahead; a 1 s poll finds it in ~0.5 s
ERROR_LOG_EVERY_S = 60.0  # a dead metadata service is logged once a minute, not every poll


class RebalanceAction(str, Enum):
    """What a rebalance recommendation (an early, uncertain hint) leads to."""

    CHECKPOINT = "checkpoint"  # ask the training loop for a checkpoint now; keep the node
    DRAIN = "drain"  # treat it like a notice, with no deadline
    IGNORE = "ignore"


@dataclass(frozen=True)
class Drain:
    """Drain this node with reason PREEMPTION; Ray Train checkpoints and moves off it."""

    deadline_ms: int  # 0: no deadline
    reason: str


@dataclass(frozen=True)
class RequestCheckpoint:
    reason: str


Decision = Drain | RequestCheckpoint


@dataclass(frozen=True)
class NoticeRecord:
    """One notice as the ledger and `spotray status` read it."""

    kind: str  # "spot-interruption" | "rebalance"
    node_id: str
    instance_id: str | None
    action: str | None  # terminate | stop | hibernate; None for a rebalance hint
    notice_time: str  # when the watcher saw it (UTC, ISO 8601)
    deadline: str | None  # when AWS takes the instance (the notice's `time`)
    handled: str  # drained | checkpoint-requested | ignored


@dataclass(frozen=True)
class Action:
    """What to do about one notice; `key` identifies the notice so it is handled once."""

    key: tuple[str, str]
    kind: str  # "spot-interruption" | "rebalance"
    decision: Decision | None  # None: ignore it


class NoticePolicy:
    """Decides once per notice; remembers only which notices have been handled."""

    def __init__(self, rebalance: RebalanceAction = RebalanceAction.CHECKPOINT) -> None:
        self.rebalance = rebalance
        self._handled: set[tuple[str, str]] = set()

    def decide(self, notice: SpotNotice | None, hint: RebalanceHint | None) -> list[Action]:
        """An action for each notice not handled yet."""
        out = []
        if notice is not None:
            reason = f"spot {notice.action} at {notice.time.isoformat()}"
            out.append(
                Action(
                    ("notice", notice.time.isoformat()),
                    "spot-interruption",
                    Drain(notice.deadline_ms, reason),
                )
            )
        if hint is not None:
            reason = f"rebalance recommendation of {hint.notice_time.isoformat()}"
            decision: Decision | None = {
                RebalanceAction.CHECKPOINT: RequestCheckpoint(reason),
                RebalanceAction.DRAIN: Drain(0, reason),
                RebalanceAction.IGNORE: None,
            }[self.rebalance]
            out.append(Action(("rebalance", hint.notice_time.isoformat()), "rebalance", decision))
        return [a for a in out if a.key not in self._handled]

    def handled(self, action: Action) -> None:
        """Called once the action was carried out; until then it is decided again."""
        self._handled.add(action.key)


GCS_WAIT_LOG_EVERY_S = 60.0  # an unreachable GCS is said once a minute, not every try


def wait_for_gcs(address: str, stop: threading.Event, probe_timeout_s: float = 1.0) -> bool:
    """Wait until the GCS at `address` (HOST:PORT) accepts a TCP connection; False if `stop`
    was set first. `auto` is left to Ray, which finds the local cluster or fails at once.

    Ray's own connect blocks in C++ for ~30 s per try, logs addresses other than the one
    given, and holds off SIGTERM meanwhile: a plain socket probe keeps the watcher responsive
    and its log says what it waits for.
    """
    host, _, port = address.rpartition(":")
    if address == "auto" or not port.isdigit():
        return True
    last_log = -GCS_WAIT_LOG_EVERY_S
    while not stop.is_set():
        try:
            with socket.create_connection((host, int(port)), timeout=probe_timeout_s):
                return True
        except OSError as err:
            if time.monotonic() - last_log >= GCS_WAIT_LOG_EVERY_S:
                logger.warning("cannot reach the Ray GCS at %s (%s); retrying every second", address, err)
                last_log = time.monotonic()
        stop.wait(1.0)
    return False


def request_checkpoint(reason: str, node_id: str | None = None) -> float:
    """Ask every running training loop of the cluster for a checkpoint now, from a process
    connected to Ray; returns the request's time, which the answering checkpoint reports."""
    request = CheckpointRequest(time.time(), reason, node_id)
    kv_put(CheckpointRequest.KEY, request.encode(), KV_NAMESPACE)
    return request.time


class RayNode:
    """The Ray side of one node: drain it, ask for a checkpoint, record notices."""

    def __init__(self, gcs_address: str, node_id: str) -> None:
        self.gcs = gcs_client(gcs_address)
        self.node_id = node_id

    def drain(self, decision: Drain) -> None:
        accepted, why = drain_for_preemption(self.gcs, self.node_id, decision.reason, decision.deadline_ms)
        if not accepted:
            raise RuntimeError(f"Ray refused to drain node {self.node_id}: {why}")

    def request_checkpoint(self, decision: RequestCheckpoint) -> None:
        request = CheckpointRequest(time.time(), decision.reason, self.node_id)
        self.gcs.internal_kv_put(CheckpointRequest.KEY, request.encode(), True, KV_NAMESPACE)

    def record(self, record: NoticeRecord) -> None:
        key = f"{NOTICE_PREFIX}{record.node_id}/{record.kind}/{record.notice_time}"
        self.gcs.internal_kv_put(key.encode(), json.dumps(asdict(record)).encode(), True, KV_NAMESPACE)


def read_notices(gcs_address: str) -> list[NoticeRecord]:
    """Every notice recorded on the cluster, oldest first."""
    gcs = gcs_client(gcs_address)
    keys = gcs.internal_kv_keys(NOTICE_PREFIX.encode(), KV_NAMESPACE)
    records = [NoticeRecord(**json.loads(gcs.internal_kv_get(k, KV_NAMESPACE))) for k in keys]
    return sorted(records, key=lambda r: r.notice_time)


class Watcher:
    """Polls IMDS and acts on what the policy decides. `poll_once` is one round."""

    def __init__(
        self, imds: IMDSClient, node: RayNode, policy: NoticePolicy, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.imds = imds
        self.node = node
        self.policy = policy
        self.interval_s = interval_s
        self.instance_id: str | None = None
        self._errors = 0
        self._last_error_log = float("-inf")
        self._counter: Any = None

    def _count(self, kind: str, action: str | None) -> None:
        """`spotray_preemption_notices_total` in Ray's metrics, when connected to Ray."""
        import ray

        if not ray.is_initialized():
            return
        if self._counter is None:
            from ray.util.metrics import Counter

            self._counter = Counter(
                "spotray_preemption_notices_total",
                description="Spot interruption notices and rebalance hints seen by spotray watch.",
                tag_keys=("kind", "action", "node_id"),
            )
        self._counter.inc(1, tags={"kind": kind, "action": action or "", "node_id": self.node.node_id})

    def _log_error(self, err: Exception) -> None:
        self._errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            logger.warning("metadata service: %s (%d failed polls so far; still watching)", err, self._errors)
            self._last_error_log = now

    def poll_once(self) -> list[NoticeRecord]:
        """Ask IMDS once, act on anything new; returns the notices handled this round.

        The notice is read first and on its own: the rebalance hint and the instance id are
        best effort, and a garbled answer there never holds a notice back."""
        try:
            notice = self.imds.spot_notice()
        except IMDSError as err:  # never act on a guess: try again next round
            self._log_error(err)
            return []
        hint = self._best_effort(self.imds.rebalance)
        if self.instance_id is None:
            self.instance_id = self._best_effort(self.imds.instance_id)
        handled = []
        for action in self.policy.decide(notice, hint):
            try:
                outcome = self._carry_out(action.decision)
            except Exception as err:  # the GCS may be busy or restarting: retry next round
                logger.error("could not act on %s: %s (retrying)", action.kind, err)
                continue
            self.policy.handled(action)
            spot = action.kind == "spot-interruption" and notice is not None
            record = NoticeRecord(
                kind=action.kind,
                node_id=self.node.node_id,
                instance_id=self.instance_id,
                action=notice.action if spot else None,
                notice_time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                deadline=notice.time.isoformat() if spot else None,
                handled=outcome,
            )
            try:
                self.node.record(record)
            except Exception as err:  # the drain went through; a lost record is only logged
                logger.error("could not record %s: %s", action.kind, err)
            self._count(action.kind, record.action)
            logger.warning("%s on node %s: %s", action.kind, self.node.node_id, outcome)
            handled.append(record)
        return handled

    def _best_effort(self, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except IMDSError as err:
            self._log_error(err)
            return None

    def _carry_out(self, decision: Decision | None) -> str:
        if isinstance(decision, Drain):
            self.node.drain(decision)
            return "drained"
        if isinstance(decision, RequestCheckpoint):
            self.node.request_checkpoint(decision)
            return "checkpoint-requested"
        return "ignored"

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            self.poll_once()
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
