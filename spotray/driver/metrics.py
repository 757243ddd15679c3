"""spotray's numbers in the Ray dashboard, and the live run for `spotray status`.

The driver already folds the run's events (`progress.RunState`); `RunMetrics` is one more
follower of them. It sets gauges through `ray.util.metrics`, so they reach each node's
Prometheus endpoint (the metrics export port, names prefixed `ray_`) and Ray's Grafana
next to Ray's own, and it publishes the run's state in the GCS's KV store, where
`spotray status` reads it without joining the cluster as a driver.

The cluster's $/h and cost so far come from Ray's node table (`spotray.cost.live`),
re-read every `PRICE_EVERY_S`; the run's cost so far adds up the cluster's $/h over the
run. The preemption notice counter is the watchers' own (`spotray.spot.watch`).
`spotray/dashboards/grafana.json` charts them all.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from spotray.cost.live import PricedCluster, price_cluster, read_ray_nodes
from spotray.cost.prices import PriceSeries, load_on_demand
from spotray.driver.progress import RunState
from spotray.runtime import messages as msg
from spotray.spot.watch import KV_NAMESPACE

logger = logging.getLogger("spotray.driver.metrics")

RUN_PREFIX = "run/"  # run/<name>: the newest RunSnapshot of that run, as JSON
PRICE_EVERY_S = 10.0  # Ray's node table changes by the minute; its metrics export every 10 s


@dataclass(frozen=True)
class Gauge:
    name: str
    description: str
    tag: str  # "run" or "cluster"


# Every spotray metric the driver exports; the Grafana dashboard charts each of them.
GAUGES = (
    Gauge("spotray_workers", "Training workers in the current worker group.", "run"),
    Gauge("spotray_step", "The run's newest step.", "run"),
    Gauge("spotray_steps_lost", "Steps trained, then trained again after a restart, so far.", "run"),
    Gauge("spotray_restarts", "Worker-group restarts so far.", "run"),
    Gauge("spotray_checkpoint_stall_seconds", "Seconds the newest checkpoint stopped training.", "run"),
    Gauge("spotray_checkpoint_write_seconds", "Seconds the newest checkpoint took to write.", "run"),
    Gauge("spotray_goodput", "Share of the run's time whose work survived restarts.", "run"),
    Gauge("spotray_run_usd", "What the cluster cost while this run trained, so far (USD).", "run"),
    Gauge("spotray_cluster_usd_per_hour", "The live nodes' price now (USD per hour).", "cluster"),
    Gauge("spotray_cluster_usd", "What the cluster's nodes cost so far (USD).", "cluster"),
)
NOTICE_COUNTER = "spotray_preemption_notices_total"  # exported by each node's `spotray watch`


@dataclass(frozen=True)
class RunSnapshot:
    """What `spotray status` shows of a run."""

    run: str
    cluster: str
    step: int
    total: int
    loss: float
    workers: int
    restarts: int
    notices: int
    steps_lost: int
    goodput: float
    run_usd: float
    last_checkpoint_step: int | None
    last_checkpoint_path: str | None
    started: float | None
    updated: float
    finished: bool = False


class RunMetrics:
    """A driver-side follower: gauges every poll, the cluster priced every `PRICE_EVERY_S`."""

    def __init__(self, run: str, cluster: str, gcs_address: str, state: RunState) -> None:
        from ray.util import metrics

        from spotray.ray_compat.node import gcs_client

        self.run, self.cluster, self.gcs_address, self.state = run, cluster, gcs_address, state
        self.gcs = gcs_client(gcs_address)
        tags = {"run": {"run": run}, "cluster": {"cluster": cluster}}
        # name -> (the Ray gauge, the tags it is always set with)
        self.gauges = {
            g.name: (metrics.Gauge(g.name, description=g.description, tag_keys=(g.tag,)), tags[g.tag])
            for g in GAUGES
        }
        self.on_demand = load_on_demand()
        self.spot = _cached_spot_prices()
        self.priced: PricedCluster | None = None
        self.run_usd = 0.0
        self._priced_at = 0.0

    def __call__(self, latest: msg.Stepped | None, events: list[msg.Event]) -> None:
        try:
            self._update(time.time())
        except Exception as err:  # the dashboard is never worth a run
            logger.warning("spotray metrics not updated: %s", err)

    def finish(self) -> None:
        try:
            self._publish(time.time(), finished=True)
        except Exception as err:
            logger.warning("spotray run state not published: %s", err)

    def _update(self, now: float) -> None:
        s = self.state
        if now - self._priced_at >= PRICE_EVERY_S:
            if self.priced is not None and s.started_at is not None:
                self.run_usd += self.priced.usd_per_hour * (now - max(self._priced_at, s.started_at)) / 3600
            nodes = read_ray_nodes(self.gcs_address)
            self.priced = price_cluster(nodes, self.cluster, self.on_demand, self.spot)
            self._priced_at = now
            self._set("spotray_cluster_usd_per_hour", self.priced.usd_per_hour)
            self._set("spotray_cluster_usd", self.priced.bill.cost)
        ckpt = s.last_checkpoint
        for name, value in (
            ("spotray_workers", s.world_size),
            ("spotray_step", s.step),
            ("spotray_steps_lost", s.steps_lost),
            ("spotray_restarts", s.restarts),
            ("spotray_checkpoint_stall_seconds", ckpt.stall_s if ckpt else 0.0),
            ("spotray_checkpoint_write_seconds", ckpt.write_s if ckpt else 0.0),
            ("spotray_goodput", s.goodput(now)),
            ("spotray_run_usd", self.run_usd),
        ):
            self._set(name, value)
        self._publish(now)

    def _set(self, name: str, value: float) -> None:
        gauge, tags = self.gauges[name]
        gauge.set(float(value), tags=tags)

    def _publish(self, now: float, finished: bool = False) -> None:
        s = self.state
        ckpt = s.last_checkpoint
        snapshot = RunSnapshot(
            run=self.run,
            cluster=self.cluster,
            step=s.step,
            total=s.total,
            loss=s.loss,
            workers=s.world_size,
            restarts=s.restarts,
            notices=s.notices,
            steps_lost=s.steps_lost,
            goodput=round(s.goodput(now), 4),
            run_usd=round(self.run_usd, 4),
            last_checkpoint_step=ckpt.step if ckpt else None,
            last_checkpoint_path=ckpt.path if ckpt else None,
            started=s.started_at,
            updated=now,
            finished=finished,
        )
        key = f"{RUN_PREFIX}{self.run}".encode()
        self.gcs.internal_kv_put(key, json.dumps(snapshot.__dict__).encode(), True, KV_NAMESPACE)


def read_runs(gcs_address: str) -> list[RunSnapshot]:
    """Every run published on the cluster, newest update first."""
    from spotray.ray_compat.node import gcs_client

    gcs = gcs_client(gcs_address)
    keys = gcs.internal_kv_keys(RUN_PREFIX.encode(), KV_NAMESPACE)
    runs = [RunSnapshot(**json.loads(gcs.internal_kv_get(k, KV_NAMESPACE))) for k in keys]
    return sorted(runs, key=lambda r: -r.updated)


def _cached_spot_prices() -> dict[tuple[str, str], PriceSeries]:
    """The ledger's cached spot prices; none (every spot node estimated) if it cannot be read."""
    import sqlite3

    from spotray.cost.ledger import Ledger

    try:
        with Ledger() as ledger:
            return ledger.spot_series()
    except (sqlite3.Error, OSError) as err:
        logger.warning("no cached spot prices (%s): spot nodes are priced as estimates", err)
        return {}
