"""`spotray status`: the cluster's nodes, its runs and its cost, in one look.

Everything comes from the cluster's GCS, read as a plain client (no driver joins the
cluster): Ray's node table and draining list, the watchers' notices and the runs the
drivers publish (`spotray.driver.metrics`). The nodes are priced like the bill
(`spotray.cost.live`) and written to the cost ledger, so that `spotray cost --offline`
knows the nodes of a local cluster too.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table

from spotray.cost.ledger import Ledger
from spotray.cost.live import PricedCluster, price_cluster, read_draining, read_ray_nodes
from spotray.cost.prices import load_on_demand
from spotray.driver.metrics import RunSnapshot, read_runs
from spotray.spot.watch import NoticeRecord, read_notices

STALE_S = 60.0  # a run whose driver said nothing for this long is not running any more


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    gcs_address: str
    priced: PricedCluster
    draining: set[str]
    runs: list[RunSnapshot]
    notices: list[NoticeRecord]
    read_at: float

    @property
    def ended(self) -> dict[str, int]:
        """How many nodes ended, by reason (preempted, scaled in, torn down)."""
        return dict(Counter(n.end_reason or "ended" for n in self.priced.nodes if not n.alive))

    def as_dict(self) -> dict[str, object]:
        alive = [n for n in self.priced.nodes if n.alive]
        return {
            "cluster": self.name,
            "gcs_address": self.gcs_address,
            "usd_per_hour": round(self.priced.usd_per_hour, 4),
            "usd_so_far": round(self.priced.bill.cost, 4),
            "estimated": bool(self.priced.bill.estimated),
            "nodes": [
                {
                    "node_id": n.node_id,
                    "instance_id": n.instance_id,
                    "node_type": "head" if n.is_head else n.node_type,
                    "instance_type": n.instance_type,
                    "market": n.market,
                    "az": n.zone,
                    "uptime_s": round(self.read_at - n.start, 1),
                    "usd_per_hour": self.priced.rates.get(n.node_id, (None, False))[0],
                    "draining": n.node_id in self.draining,
                }
                for n in alive
            ],
            "ended_nodes": self.ended,
            "notices": len(self.notices),
            "runs": [{**r.__dict__, "state": run_state(r, self.read_at)} for r in self.runs],
        }


def read_status(gcs_address: str, cluster: str, ledger: Ledger) -> ClusterStatus:
    priced = price_cluster(read_ray_nodes(gcs_address), cluster, load_on_demand(), ledger.spot_series())
    try:
        for bill in priced.bill.nodes:
            ledger.upsert_node(bill.node)
    except sqlite3.Error:
        pass  # a read-only ledger still lets status show the cluster
    return ClusterStatus(
        cluster,
        gcs_address,
        priced,
        read_draining(gcs_address),
        read_runs(gcs_address),
        read_notices(gcs_address),
        time.time(),
    )


def run_state(run: RunSnapshot, now: float) -> str:
    if run.finished:
        return "finished"
    return "running" if now - run.updated < STALE_S else "stopped"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def short_id(node_id: str, instance_id: str) -> str:
    """EC2's instance id where there is one, else the end of Ray's node id."""
    return instance_id if instance_id.startswith("i-") else "…" + node_id[-8:]


def render(status: ClusterStatus, console: Console) -> None:
    p = status.priced
    table = Table(
        title=f"cluster {status.name} ({status.gcs_address})",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1),
        pad_edge=False,
    )
    for col in ("node", "instance", "market", "AZ", "uptime", "$/h", "state"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("uptime", "$/h") else "left")
    for n in (n for n in p.nodes if n.alive):
        rate, estimated = p.rates.get(n.node_id, (None, False))
        table.add_row(
            short_id(n.node_id, n.instance_id),
            (n.instance_type or "?") + (" (head)" if n.is_head else ""),
            n.market,
            n.zone or "-",
            _uptime(status.read_at - n.start),
            "-" if rate is None else f"{rate:.3f}" + ("*" if estimated else ""),
            "[yellow]draining[/]" if n.node_id in status.draining else "alive",
        )
    console.print(table)
    ended = ", ".join(f"{count} {reason}" for reason, count in sorted(status.ended.items()))
    if ended:
        console.print(f"ended nodes: {ended}")
    console.print(
        f"cost: [bold]${p.usd_per_hour:,.2f}/h[/] now, ${p.bill.cost:,.2f} so far"
        f" (on demand ${p.bill.on_demand_cost:,.2f})"
    )
    if p.bill.estimated:
        console.print("* estimated: no spot price cached for this type/AZ (`spotray cost` caches them)")
    lost = status.ended.get("preempted", 0)
    console.print(f"preemptions: {len(status.notices)} notice(s), {lost} node(s) lost")
    if not status.runs:
        console.print("runs: none published on this cluster")
    for r in status.runs:
        state = run_state(r, status.read_at)
        ckpt = (
            f"step {r.last_checkpoint_step} ({r.last_checkpoint_path})" if r.last_checkpoint_step else "none"
        )
        lines = (
            f"run [bold]{r.run}[/] {state}: step {r.step}/{r.total}, {r.workers} worker(s), "
            f"loss {r.loss:.4f}",
            f"  restarts {r.restarts}, steps lost {r.steps_lost}, goodput {r.goodput:.2f}, ${r.run_usd:,.2f}",
            f"  last checkpoint: {ckpt}",
        )
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
