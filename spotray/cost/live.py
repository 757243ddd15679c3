"""The cluster as Ray sees it now, priced: what `spotray status` and the dashboard gauges show.

Ray's GCS keeps every node the cluster had (alive and dead) with its start and end time, so
the cluster's cost so far needs no AWS call: each node is priced like a ledger node, by the
`market` and `instance-type` labels cluster.yaml gives every node type and, where the
worker's start command sets it, Ray's own `ray.io/availability-zone` label. A spot node is
priced from the spot prices cached in the ledger (`spotray cost` fills
it), else, like the bill, at a guess that is marked estimated. A node without an
`instance-type` label (a cluster not started from spotray's configs) is shown, not priced.

How a node ended, from Ray's death info: drained for preemption, or killed without notice
while on the spot market, is `preempted`; a worker that ended as expected (the autoscaler's
idle drain ends in a SIGTERM, recorded as an expected termination) is `scaled in`; the rest
is `torn down`. `spotray down` closes the ledger's nodes first, so its own kills stay
`torn down` there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from spotray.cost.aws import default_region
from spotray.cost.bill import Bill, make_bill, rate_at
from spotray.cost.ledger import Node
from spotray.cost.prices import OnDemandTable, PriceSeries, UnknownInstanceTypeError

MARKET_LABEL = "market"
INSTANCE_TYPE_LABEL = "instance-type"
ZONE_LABEL = "ray.io/availability-zone"  # Ray sets it from RAY_NODE_ZONE at `ray start`
REGION_LABEL = "ray.io/availability-region"


@dataclass(frozen=True)
class RayNode:
    """One node of Ray's node table, with what spotray needs to show and price it."""

    node_id: str
    instance_id: str  # EC2's id where the provider set it, else Ray's node id @ its start
    node_type: str | None
    instance_type: str | None  # None: no `instance-type` label, not priced
    market: str
    zone: str
    region: str | None
    alive: bool
    start: float
    end: float | None
    end_reason: str | None
    is_head: bool

    def as_ledger_node(self, cluster: str) -> Node:
        return Node(
            self.instance_id,
            cluster,
            self.instance_type or "unknown",
            self.zone,
            self.market,
            self.start,
            self.end,
            self.end_reason,
            self.node_type,
        )


def read_ray_nodes(gcs_address: str) -> list[RayNode]:
    """Every node in the GCS, alive and dead: the head first, then by start."""
    from spotray.ray_compat.node import gcs_client

    nodes = [_from_node_info(info) for info in gcs_client(gcs_address).get_all_node_info().values()]
    return sorted(nodes, key=lambda n: (not n.is_head, n.start, n.node_id))


def read_draining(gcs_address: str) -> set[str]:
    """The ids of the nodes being drained now (a spot notice, an idle scale-in)."""
    from spotray.ray_compat.node import gcs_client

    return {n.hex() if isinstance(n, bytes) else str(n) for n in gcs_client(gcs_address).get_draining_nodes()}


def _from_node_info(info: Any) -> RayNode:
    labels = dict(info.labels)
    node_id = info.node_id.hex()
    from spotray.ray_compat.node import node_alive_state, node_death_reasons

    reasons = node_death_reasons()
    alive = info.state == node_alive_state()
    market = labels.get(MARKET_LABEL) or labels.get("ray.io/market-type") or "on-demand"
    end = info.end_time_ms / 1000 if not alive and info.end_time_ms else None
    reason = None
    if not alive:
        code = info.death_info.reason
        unexpected_spot = code == reasons["UNEXPECTED_TERMINATION"] and market == "spot"
        scaled_in = code in (reasons["AUTOSCALER_DRAIN_IDLE"], reasons["EXPECTED_TERMINATION"])
        if code == reasons["AUTOSCALER_DRAIN_PREEMPTED"] or unexpected_spot:
            reason = "preempted"
        elif scaled_in and not info.is_head_node:
            reason = "scaled in"  # the autoscaler's idle drain ends in a SIGTERM: EXPECTED
        else:
            reason = "torn down"
    start = info.start_time_ms / 1000
    # Fake nodes reuse their ids in every local cluster: the start time keeps them apart.
    instance_id = info.instance_id if info.instance_id.startswith("i-") else f"{node_id}@{start:.0f}"
    return RayNode(
        node_id=node_id,
        instance_id=instance_id,
        node_type=info.node_type_name or None,
        instance_type=labels.get(INSTANCE_TYPE_LABEL),
        market="spot" if market == "spot" else "on-demand",
        zone=labels.get(ZONE_LABEL, ""),
        region=labels.get(REGION_LABEL),
        alive=alive,
        start=start,
        end=end,
        end_reason=reason,
        is_head=info.is_head_node,
    )


@dataclass(frozen=True)
class PricedCluster:
    nodes: list[RayNode]
    bill: Bill  # the priced nodes since the cluster started (Ray's node table)
    rates: dict[str, tuple[float, bool]]  # alive node id -> ($/h now, estimated)

    @property
    def usd_per_hour(self) -> float:
        return sum(rate for rate, _ in self.rates.values())


def price_cluster(
    nodes: list[RayNode],
    cluster: str,
    on_demand: OnDemandTable,
    spot: dict[tuple[str, str], PriceSeries],
    now: float | None = None,
) -> PricedCluster:
    """Each priced node's cost so far and each live one's $/h now."""
    now = now if now is not None else time.time()
    priced, od_rates, rates = [], {}, {}
    for n in nodes:
        if n.instance_type is None:
            continue
        try:
            od_rates[n.instance_type] = on_demand.price(n.instance_type, n.region or default_region())
        except UnknownInstanceTypeError:
            continue
        node = n.as_ledger_node(cluster)
        priced.append(node)
        if n.alive:
            rates[n.node_id] = rate_at(node, now, spot, od_rates[n.instance_type])
    return PricedCluster(nodes, make_bill(priced, spot, od_rates, [], now), rates)
