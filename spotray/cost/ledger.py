"""The cost ledger: every node a cluster ever had, the notices, the run's restarts and
checkpoints, and the spot prices read, in one SQLite file that outlives the cluster.

It is filled from EC2 (`describe_instances`: the cluster's tag, `InstanceLifecycle`,
`LaunchTime`, the state reason that says a spot interruption ended a node), from the watcher's
notice records and from `spotray train`. Every write is an upsert keyed on what identifies
the fact (instance id, notice time, price change), so reading the same source twice adds
nothing twice. Default path `~/.spotray/ledger.db`; `SPOTRAY_LEDGER` or `--ledger` moves it.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spotray.cost.prices import PriceSeries, SpotPrice, series_by_market, spotray_home
from spotray.runtime import messages as msg
from spotray.spot.watch import NoticeRecord

CLUSTER_TAG = "ray-cluster-name"  # what Ray's AWS node provider tags every node with
NODE_TYPE_TAG = "ray-user-node-type"
SPOT_INTERRUPTION = "Server.SpotInstanceTermination"
# EC2 says when a node stopped only inside StateTransitionReason, e.g.
# "User initiated (2026-11-26 18:22:00 GMT)" or "Service initiated (...)".
_REASON_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")  # moto writes UTC

SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, region TEXT NOT NULL, created REAL NOT NULL, ended REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    instance_id TEXT PRIMARY KEY, cluster TEXT NOT NULL, instance_type TEXT NOT NULL,
    az TEXT NOT NULL, market TEXT NOT NULL CHECK (market IN ('spot', 'on-demand')),
    node_type TEXT, launch REAL NOT NULL, ended REAL,
    end_reason TEXT CHECK (end_reason IN ('preempted', 'scaled in', 'torn down'))
);
CREATE TABLE IF NOT EXISTS notices (
    instance_id TEXT NOT NULL, node_id TEXT, action TEXT NOT NULL, notice_time REAL NOT NULL,
    deadline REAL, PRIMARY KEY (instance_id, notice_time)
);
CREATE TABLE IF NOT EXISTS run_events (
    run TEXT NOT NULL, cluster TEXT, kind TEXT NOT NULL CHECK (kind IN ('start', 'checkpoint')),
    time REAL NOT NULL, step INTEGER NOT NULL, PRIMARY KEY (run, kind, time)
);
CREATE TABLE IF NOT EXISTS spot_prices (
    instance_type TEXT NOT NULL, az TEXT NOT NULL, time REAL NOT NULL, price REAL NOT NULL,
    PRIMARY KEY (instance_type, az, time)
);
"""


def default_path() -> Path:
    return Path(os.environ.get("SPOTRAY_LEDGER") or spotray_home() / "ledger.db")


def current_cluster() -> str:
    """The cluster this process runs on: `SPOTRAY_CLUSTER` (set by `spotray up --local`), else
    the name in the config Ray's launcher leaves on an AWS head, else `local`."""
    if os.environ.get("SPOTRAY_CLUSTER"):
        return os.environ["SPOTRAY_CLUSTER"]
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if bootstrap.exists():
        import yaml

        return str(yaml.safe_load(bootstrap.read_text()).get("cluster_name", "local"))
    return "local"


@dataclass(frozen=True)
class Node:
    instance_id: str
    cluster: str
    instance_type: str
    az: str
    market: str  # "spot" or "on-demand"
    launch: float  # unix seconds
    end: float | None = None  # None: still running
    end_reason: str | None = None  # preempted, scaled in, torn down
    node_type: str | None = None  # the cluster.yaml node type


@dataclass(frozen=True)
class RunEvent:
    run: str
    kind: str  # "start" (the first is the run's start, later ones are restarts) or "checkpoint"
    time: float
    step: int
    cluster: str | None = None


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # clusters --------------------------------------------------------------------------
    def add_cluster(self, name: str, region: str, created: float | None = None) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO clusters VALUES (?, ?, ?, NULL) ON CONFLICT(name) DO NOTHING",
                (name, region, created if created is not None else time.time()),
            )

    def cluster_region(self, name: str) -> str | None:
        row = self.db.execute("SELECT region FROM clusters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def clusters(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM clusters ORDER BY created")]

    def finalize(self, cluster: str, at: float | None = None) -> int:
        """The cluster is being torn down: close every node still open. Returns how many."""
        at = at if at is not None else time.time()
        with self.db:
            closed = self.db.execute(
                "UPDATE nodes SET ended = ?, end_reason = 'torn down' WHERE cluster = ? AND ended IS NULL",
                (at, cluster),
            ).rowcount
            self.db.execute("UPDATE clusters SET ended = ? WHERE name = ? AND ended IS NULL", (at, cluster))
        return closed

    # nodes -----------------------------------------------------------------------------
    def upsert_node(self, node: Node) -> bool:
        """Record a node, or what is new about it (its end); True if it was not known."""
        with self.db:
            query = "SELECT 1 FROM nodes WHERE instance_id = ?"
            known = self.db.execute(query, (node.instance_id,)).fetchone()
            self.db.execute(
                """INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(instance_id) DO UPDATE SET
                     ended = COALESCE(nodes.ended, excluded.ended),
                     end_reason = COALESCE(nodes.end_reason, excluded.end_reason)""",
                (
                    node.instance_id,
                    node.cluster,
                    node.instance_type,
                    node.az,
                    node.market,
                    node.node_type,
                    node.launch,
                    node.end,
                    node.end_reason,
                ),
            )
        return known is None

    def nodes(self, cluster: str | None = None) -> list[Node]:
        query = "SELECT instance_id, cluster, instance_type, az, market, launch, ended, end_reason, node_type"
        query += " FROM nodes" + (" WHERE cluster = ?" if cluster else "") + " ORDER BY launch, instance_id"
        return [Node(*row) for row in self.db.execute(query, (cluster,) if cluster else ())]

    def sync_ec2(self, ec2: Any, cluster: str, now: float | None = None) -> int:
        """Read the cluster's instances from EC2 into the ledger; returns how many were new."""
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}]
        )
        new = 0
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    new += self.upsert_node(node_from_ec2(instance, cluster, now))
        return new

    # notices and run events --------------------------------------------------------------
    def add_notice(
        self, instance_id: str, action: str, notice_time: float, deadline: float | None, node_id: str = ""
    ) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO notices VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (instance_id, node_id, action, notice_time, deadline),
            )

    def add_notice_records(self, records: Iterable[NoticeRecord]) -> None:
        """The watchers' records (`spotray.spot.watch`): spot interruptions and rebalance hints."""
        for r in records:
            deadline = _iso(r.deadline) if r.deadline else None
            instance = r.instance_id or r.node_id
            self.add_notice(instance, r.action or r.kind, _iso(r.notice_time), deadline, r.node_id)

    def notices(self) -> list[tuple[str, str, float, float | None]]:
        query = "SELECT instance_id, action, notice_time, deadline FROM notices ORDER BY notice_time"
        return list(self.db.execute(query))

    def add_run_event(self, event: RunEvent) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO run_events VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (event.run, event.cluster, event.kind, event.time, event.step),
            )

    def run_events(self, run: str | None = None, cluster: str | None = None) -> list[RunEvent]:
        where, args = [], []
        if run:
            where.append("run = ?")
            args.append(run)
        if cluster:
            where.append("cluster = ?")
            args.append(cluster)
        query = "SELECT run, kind, time, step, cluster FROM run_events"
        query += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time"
        return [RunEvent(*row) for row in self.db.execute(query, args)]

    # spot prices ---------------------------------------------------------------------------
    def add_spot_prices(self, history: Iterable[SpotPrice]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO spot_prices VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(p.instance_type, p.az, p.time, p.price) for p in history],
            )

    def spot_series(self) -> dict[tuple[str, str], PriceSeries]:
        rows = self.db.execute("SELECT time, instance_type, az, price FROM spot_prices")
        return series_by_market(SpotPrice(*row) for row in rows)


def node_from_ec2(instance: dict[str, Any], cluster: str, now: float | None = None) -> Node:
    """One `describe_instances` instance as a ledger node."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    state = instance["State"]["Name"]
    end = reason = None
    if state in ("shutting-down", "terminated", "stopping", "stopped"):
        code = instance.get("StateReason", {}).get("Code", "")
        reason = "preempted" if code == SPOT_INTERRUPTION else "scaled in"
        end = _transition_time(instance.get("StateTransitionReason", "")) or (now or time.time())
    return Node(
        instance_id=instance["InstanceId"],
        cluster=cluster,
        instance_type=instance["InstanceType"],
        az=instance["Placement"]["AvailabilityZone"],
        market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
        launch=instance["LaunchTime"].timestamp(),
        end=end,
        end_reason=reason,
        node_type=tags.get(NODE_TYPE_TAG),
    )


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _transition_time(reason: str) -> float | None:
    match = _REASON_TIME.search(reason)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def ledger_problem(path: Path | None = None) -> str | None:
    """Why the ledger at `path` (default: the user's) cannot be written, or None.

    Asked before a run starts: a ledger that cannot be written costs the run's bill, never
    the run, and the user hears it once, up front, with the path.
    """
    path = path or default_path()
    try:
        with Ledger(path):
            return None
    except (sqlite3.Error, OSError) as err:
        return f"cost ledger {path} cannot be written ({err}): this run's cost will not be recorded"


class RunRecorder:
    """Copies a run's starts and checkpoints into the ledger as the driver sees them, so that
    the bill can cost the work lost to each preemption. Called from one thread (the driver's
    progress poller); a ledger that cannot be written costs a warning, never the run."""

    def __init__(
        self,
        run: str,
        cluster: str | None = None,
        path: Path | None = None,
        notices: Callable[[], list[NoticeRecord]] | None = None,
    ) -> None:
        self.run = run
        self.cluster = cluster if cluster is not None else current_cluster()
        self.path = path or default_path()
        self.notices = notices  # the watchers' records on the cluster, read when the loop saw one
        self._ledger: Ledger | None = None
        self._broken = False

    def __call__(self, latest: msg.Stepped | None, events: list[msg.Event]) -> None:
        wanted = [e for e in events if isinstance(e, (msg.Started, msg.Checkpointed))]
        self._write(wanted, any(isinstance(e, msg.Noticed) for e in events))

    def close(self) -> None:
        self._write([], True)  # notices the loop never saw (a node lost before its poll)
        if self._ledger is not None:
            self._ledger.close()

    def _write(self, events: list[msg.Started | msg.Checkpointed], read_notices: bool) -> None:
        read_notices = read_notices and self.notices is not None
        if self._broken or not (events or read_notices):
            return
        try:
            self._ledger = self._ledger or Ledger(self.path)
            for e in events:
                self._ledger.add_run_event(RunEvent(self.run, e.kind, e.time, e.step, self.cluster))
            if read_notices and self.notices is not None:
                self._ledger.add_notice_records(self.notices())
        except (sqlite3.Error, OSError, RuntimeError) as err:  # never the run's problem
            self._broken = True
            logging.getLogger(__name__).warning("cost ledger not written (%s): %s", self.path, err)
