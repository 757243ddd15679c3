"""The bill: each node priced per second at the price in force at each moment of its life,
next to what the same node-seconds cost on demand, and what preemptions cost in lost work.

Spot nodes: the node's life is cut at every spot price change of its type (in any AZ),
each piece priced at the rate in force. Where the node's AZ has no price (none read for that
AZ, or none before the node started) the piece is priced at the other AZs' mean price of the
same type at that moment, following their changes, or else on demand, and the node is
marked estimated. On-demand nodes: the table's rate.

Lost work, per preemption at time t: the work since the run's last checkpoint before t is
redone, and the job stands still until it restarts (the next `start` event), so
(t - last checkpoint) + (restart - t) seconds of every node alive at t are paid for nothing.
Goodput is 1 - lost node-seconds / billed node-seconds.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from spotray.cost.ledger import Node, RunEvent
from spotray.cost.prices import PriceSeries


@dataclass(frozen=True)
class NodeBill:
    node: Node
    seconds: float
    cost: float  # at the node's own market
    on_demand_cost: float  # the same seconds on demand
    estimated: bool  # priced without a spot price for some of its life

    @property
    def rate(self) -> float:
        return self.cost / self.seconds * 3600 if self.seconds else 0.0


@dataclass(frozen=True)
class Preemption:
    instance_id: str
    time: float
    last_checkpoint: float | None  # None: no checkpoint before it, the run's start counts
    restart: float | None  # None: no restart seen (yet)
    lost_node_seconds: float
    lost_cost: float


@dataclass
class Bill:
    nodes: list[NodeBill]
    preemptions: list[Preemption] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return sum(n.cost for n in self.nodes)

    @property
    def on_demand_cost(self) -> float:
        return sum(n.on_demand_cost for n in self.nodes)

    @property
    def savings(self) -> float:
        return self.on_demand_cost - self.cost

    @property
    def savings_pct(self) -> float:
        return 100 * self.savings / self.on_demand_cost if self.on_demand_cost else 0.0

    @property
    def node_seconds(self) -> float:
        return sum(n.seconds for n in self.nodes)

    @property
    def lost_cost(self) -> float:
        return sum(p.lost_cost for p in self.preemptions)

    @property
    def lost_node_seconds(self) -> float:
        return sum(p.lost_node_seconds for p in self.preemptions)

    @property
    def goodput(self) -> float:
        return 1 - self.lost_node_seconds / self.node_seconds if self.node_seconds else 0.0

    @property
    def estimated(self) -> list[str]:
        return [n.node.instance_id for n in self.nodes if n.estimated]

    def totals(self) -> dict[str, float | int | list[str]]:
        return {
            "nodes": len(self.nodes),
            "node_hours": round(self.node_seconds / 3600, 4),
            "cost_usd": round(self.cost, 2),
            "on_demand_usd": round(self.on_demand_cost, 2),
            "savings_usd": round(self.savings, 2),
            "savings_pct": round(self.savings_pct, 2),
            "preemptions": len(self.preemptions),
            "lost_work_usd": round(self.lost_cost, 2),
            "goodput": round(self.goodput, 4),
            "estimated_nodes": self.estimated,
        }


def rate_at(
    node: Node, t: float, spot: dict[tuple[str, str], PriceSeries], on_demand: float
) -> tuple[float, bool]:
    """The node's $/h at `t`, and whether that rate is an estimate."""
    if node.market == "on-demand":
        return on_demand, False
    series = spot.get((node.instance_type, node.az))
    price = series.price_at(t) if series else None
    if price is not None:
        return price, False
    others = [
        p
        for (itype, az), s in spot.items()
        if itype == node.instance_type and az != node.az and (p := s.price_at(t)) is not None
    ]
    return (sum(others) / len(others) if others else on_demand), True


def price_node(
    node: Node, spot: dict[tuple[str, str], PriceSeries], on_demand: float, now: float
) -> NodeBill:
    end = node.end if node.end is not None else now
    seconds = max(0.0, end - node.launch)
    if node.market == "on-demand":
        cost = on_demand * seconds / 3600
        return NodeBill(node, seconds, cost, cost, False)
    # Cut the life at every price change of the type in any AZ: a piece priced from the
    # other AZs follows their changes, not just the price at the node's launch.
    changes = (s.changes for (itype, _), s in spot.items() if itype == node.instance_type)
    cuts = sorted({t for series in changes for t, _ in series if node.launch < t < end})
    bounds = [node.launch, *cuts, end]
    cost, estimated = 0.0, False
    for a, b in itertools.pairwise(bounds):
        rate, guessed = rate_at(node, a, spot, on_demand)
        cost += rate * (b - a) / 3600
        estimated |= guessed
    return NodeBill(node, seconds, cost, on_demand * seconds / 3600, estimated)


def make_bill(
    nodes: list[Node],
    spot: dict[tuple[str, str], PriceSeries],
    on_demand: dict[str, float],
    events: list[RunEvent],
    now: float | None = None,
) -> Bill:
    """Price every node; cost the work lost to each preempted node (`on_demand`: $/h by type)."""
    now = now if now is not None else time.time()
    bill = Bill([price_node(n, spot, on_demand[n.instance_type], now) for n in nodes])
    checkpoints = sorted(e.time for e in events if e.kind == "checkpoint")
    starts = sorted(e.time for e in events if e.kind == "start")
    if not starts:
        return bill  # no run recorded on this cluster: nothing to say about lost work
    for node in nodes:
        t = node.end
        if node.end_reason != "preempted" or t is None or t < starts[0]:
            continue
        last = max((c for c in checkpoints if c <= t), default=None)
        since = max(last if last is not None else starts[0], max(s for s in starts if s <= t))
        restart = min((s for s in starts if s > t), default=None)
        idle = (restart if restart is not None else t) - since
        alive = [n for n in nodes if n.launch <= t and (n.end is None or n.end >= t)]
        cost = sum(rate_at(n, t - 1e-6, spot, on_demand[n.instance_type])[0] for n in alive) * idle / 3600
        bill.preemptions.append(Preemption(node.instance_id, t, last, restart, idle * len(alive), cost))
    return bill
