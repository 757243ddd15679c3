"""`spotray cost`, `spotray prices`, `spotray plan`: parse, call the cost library, render."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from spotray.cli.app import command
from spotray.cost.aws import NoCredentialsError, default_region
from spotray.errors import ConfigError, SpotrayError

LedgerOption = Annotated[
    Path | None,
    typer.Option("--ledger", envvar="SPOTRAY_LEDGER", help="Ledger file (default ~/.spotray/ledger.db)."),
]
RegionOption = Annotated[
    str | None,
    typer.Option("--region", help="AWS region (default: the cluster's, else AWS_REGION, else us-east-1)."),
]


def _region(region: str | None) -> str:
    return region or default_region()


def _short(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%m-%d %H:%M") if t else "running"


def _stamp(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M") if t else "running"


@command
def cost(
    cluster: Annotated[str | None, typer.Option("--cluster", help="Bill this cluster's nodes.")] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Bill a run: its cluster's nodes over the run's own time.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print one CSV row per node.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Bill from the ledger alone: no EC2 or price reads.")
    ] = False,
    region: RegionOption = None,
    ledger_path: LedgerOption = None,
) -> None:
    """What a cluster or a run cost on spot, next to the same node-hours on demand.

    Reads the cluster's instances from EC2 into the ledger (new nodes, ends, preemptions) and
    the spot price history over their lives, then prices every node per second at the price
    in force at each moment. The ledger keeps it all after the cluster is gone.

    [b]Examples:[/b]

      spotray cost --cluster spotray-p3

      spotray cost --run gpt2-p3-8x8 --json
    """
    from spotray.cost import bill as billing
    from spotray.cost.aws import client
    from spotray.cost.ledger import Ledger
    from spotray.cost.prices import load_on_demand, spot_price_history
    from spotray.terminal import console, human_errors

    with human_errors():
        if as_json and as_csv:
            raise ConfigError("--json and --csv: choose one")
        now = time.time()
        with Ledger(ledger_path) as ledger:
            events = ledger.run_events(run=run) if run else []
            if run and not events:
                raise ConfigError(f"no run named {run!r} in the ledger {ledger.path}")
            if run and cluster is None:
                cluster = next((e.cluster for e in events if e.cluster), None)
            if cluster is None:
                known = ", ".join(ledger.clusters()) or "none yet"
                raise ConfigError(f"--cluster NAME or --run NAME (clusters in the ledger: {known})")
            where = region or ledger.cluster_region(cluster) or _region(None)
            ec2 = None if offline else client("ec2", where)
            if ec2 is not None:
                ledger.sync_ec2(ec2, cluster, now)
            nodes = ledger.nodes(cluster)
            if not nodes:
                read = (
                    f"the ledger {ledger.path}"
                    if ec2 is None
                    else f"EC2 ({where}) or the ledger {ledger.path}"
                )
                raise SpotrayError(f"no nodes of cluster {cluster!r} in {read}")
            if run:
                nodes = _within(nodes, events[0].time, events[-1].time)
            spot_types = sorted({n.instance_type for n in nodes if n.market == "spot"})
            if spot_types and ec2 is not None:
                start = datetime.fromtimestamp(min(n.launch for n in nodes), timezone.utc)
                history = spot_price_history(
                    ec2, spot_types, start, datetime.fromtimestamp(now, timezone.utc)
                )
                ledger.add_spot_prices(history)
            table = load_on_demand()
            rates = {t: table.price(t, where) for t in {n.instance_type for n in nodes}}
            events = events or ledger.run_events(cluster=cluster)
            bill = billing.make_bill(nodes, ledger.spot_series(), rates, events, now)
        _render_bill(bill, cluster, run, as_json, as_csv, console)


def _within(nodes: list[Any], start: float, end: float) -> list[Any]:
    """The nodes' lives clipped to a run's time, its first start to its last checkpoint:
    what the run used of a shared cluster."""
    from dataclasses import replace

    out = []
    for n in nodes:
        a, b = max(n.launch, start), min(n.end if n.end is not None else end, end)
        if b > a:
            ended_within = n.end is not None and n.end <= end
            out.append(replace(n, launch=a, end=b, end_reason=n.end_reason if ended_within else None))
    return out


def _render_bill(bill: Any, cluster: str, run: str | None, as_json: bool, as_csv: bool, console: Any) -> None:
    rows = [
        {
            "instance_id": n.node.instance_id,
            "instance_type": n.node.instance_type,
            "az": n.node.az,
            "market": n.node.market,
            "launch": _stamp(n.node.launch),
            "end": _stamp(n.node.end),
            "end_reason": n.node.end_reason or "",
            "hours": round(n.seconds / 3600, 4),
            "cost_usd": round(n.cost, 2),
            "on_demand_usd": round(n.on_demand_cost, 2),
            "estimated": n.estimated,
        }
        for n in bill.nodes
    ]
    totals = bill.totals()
    if as_json:
        print(json.dumps({"cluster": cluster, "run": run, "totals": totals, "nodes": rows}, indent=2))
        return
    if as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        print(out.getvalue(), end="")
        return
    table = Table(title=f"cluster {cluster}" + (f", run {run}" if run else ""), box=box.SIMPLE_HEAD)
    for col in ("instance", "type, AZ", "market", "life (UTC)", "hours", "cost $", "on-demand $"):
        table.add_column(col, justify="right" if col.endswith("$") or col == "hours" else "left")
    for r, n in zip(rows, bill.nodes, strict=True):
        end = _short(n.node.end) + (f" {r['end_reason']}" if r["end_reason"] else "")
        cost_cell = f"{r['cost_usd']:,.2f}" + (" *" if r["estimated"] else "")
        life = f"{_short(n.node.launch)} - {end}"
        table.add_row(
            r["instance_id"], f"{r['instance_type']} {r['az']}", r["market"], life,
            f"{r['hours']:.2f}", cost_cell, f"{r['on_demand_usd']:,.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"cost [bold]${totals['cost_usd']:,.2f}[/] against ${totals['on_demand_usd']:,.2f} on demand: "
        f"saved [green]${totals['savings_usd']:,.2f} ({totals['savings_pct']:.1f}%)[/]"
    )
    console.print(
        f"preemptions {totals['preemptions']}, work lost to them ${totals['lost_work_usd']:,.2f}, "
        f"goodput {totals['goodput']:.3f}"
    )
    if totals["estimated_nodes"]:
        console.print(
            "* estimated: no spot price history for part of the node's life in its AZ; priced at the "
            "other AZs' price of its type, or on demand where none"
        )


@command
def prices(
    instance_types: Annotated[
        list[str] | None, typer.Option("--instance-types", help="Types to show (repeat); default: all known.")
    ] = None,
    region: RegionOption = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Re-read on-demand prices from the AWS Pricing API first.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Spot prices now, per AZ, next to on-demand.

    [b]Examples:[/b]

      spotray prices --instance-types p3.8xlarge --instance-types g5.12xlarge

      spotray prices --refresh --region us-west-2
    """
    from spotray.cost.aws import client
    from spotray.cost.prices import PRICING_REGION, load_on_demand, refresh_on_demand, spot_prices_now
    from spotray.terminal import console, human_errors

    with human_errors():
        where = _region(region)
        table = load_on_demand()
        types = instance_types or table.types(where)
        on_demand = {t: table.price(t, where) for t in types}  # unknown types fail here, with hints
        if refresh:
            table = refresh_on_demand(client("pricing", PRICING_REGION), where, types)
            on_demand = {t: table.price(t, where) for t in types}
        try:
            spot: dict[str, dict[str, float]] | None = spot_prices_now(client("ec2", where), types)
        except NoCredentialsError as err:  # the on-demand table ships with spotray: still useful
            spot, missing = None, f"spot prices need EC2: {err}"
        if as_json:
            body = {
                "region": where,
                "on_demand_as_of": table.as_of,
                "types": {t: {"on_demand": on_demand[t], "spot": (spot or {}).get(t, {})} for t in types},
                **({"spot_unavailable": missing} if spot is None else {}),
            }
            print(json.dumps(body, indent=2))
            return
        out = Table(title=f"{where}: spot now against on-demand (on-demand table of {table.as_of})")
        for col in ("type", "on-demand $/h", "spot $/h by AZ", "cheapest saving"):
            out.add_column(col)
        for t in types:
            azs = (spot or {}).get(t, {})
            by_az = ", ".join(f"{az} {p:.4f}" for az, p in sorted(azs.items()))
            best = f"{100 * (1 - min(azs.values()) / on_demand[t]):.0f}%" if azs else ""
            shown = by_az or ("no spot price" if spot is not None else "-")
            out.add_row(t, f"{on_demand[t]:.4f}", shown, best)
        console.print(out)
        if spot is None:
            console.print(f"[yellow]{missing}[/]", highlight=False)


@command
def plan(
    instance_type: Annotated[str, typer.Option("--instance-type", help="EC2 type, e.g. p3.8xlarge.")],
    count: Annotated[int, typer.Option("--count", min=1, help="Instances.")],
    hours: Annotated[float, typer.Option("--hours", min=0.0, help="Hours of training.")],
    spot_price: Annotated[
        float | None, typer.Option("--spot-price", min=0.0, help="$/h (default: the cheapest AZ now).")
    ] = None,
    on_demand_price: Annotated[
        float | None, typer.Option("--on-demand-price", min=0.0, help="$/h (default: the bundled table).")
    ] = None,
    interruptions_per_hour: Annotated[
        float | None,
        typer.Option("--interruptions-per-hour", min=0.0, help="Preemptions per hour across the job."),
    ] = None,
    checkpoint_seconds: Annotated[
        float | None, typer.Option("--checkpoint-seconds", min=0.0, help="Training stall per checkpoint.")
    ] = None,
    restart_seconds: Annotated[
        float, typer.Option("--restart-seconds", min=0.0, help="Node loss to resumed training.")
    ] = 0.0,
    region: RegionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """What a run would cost on demand and on spot, and what preemptions would add.

    [b]Example[/b] (the article's 8 x p3.8xlarge for a day, at its prices):

      spotray plan --instance-type p3.8xlarge --count 8 --hours 24 \\
        --on-demand-price 3.06 --spot-price 0.92
    """
    from spotray.cost.aws import client
    from spotray.cost.plan import make_plan
    from spotray.cost.prices import load_on_demand, spot_prices_now
    from spotray.terminal import console, human_errors

    with human_errors():
        where = _region(region)
        if on_demand_price is None:
            on_demand_price = load_on_demand().price(instance_type, where)
        if spot_price is None:
            try:
                by_az = spot_prices_now(client("ec2", where), [instance_type]).get(instance_type)
            except NoCredentialsError as err:
                raise NoCredentialsError(
                    f"the spot price now needs EC2 ({err}); give --spot-price to plan offline"
                ) from None
            if not by_az:
                raise SpotrayError(f"EC2 has no spot price for {instance_type} in {where}: give --spot-price")
            spot_price = min(by_az.values())
        if (interruptions_per_hour is None) != (checkpoint_seconds is None):
            raise ConfigError("--interruptions-per-hour and --checkpoint-seconds go together")
        p = make_plan(
            instance_type, count, hours, spot_price, on_demand_price,
            interruptions_per_hour, checkpoint_seconds, restart_seconds,
        )  # fmt: skip
        if as_json:
            print(json.dumps(p.as_dict(), indent=2))
            return
        console.print(f"{count} x {instance_type} for {hours:g} h", highlight=False)
        console.print(f"  on demand   ${p.on_demand_usd:,.2f}  (${on_demand_price:g}/h)", highlight=False)
        console.print(f"  spot        ${p.spot_usd:,.2f}  (${spot_price:g}/h)", highlight=False)
        console.print(f"  saving      ${p.savings_usd:,.2f}  ({p.savings_pct:.1f}%)", highlight=False)
        if p.checkpoint_interval_s is not None:
            console.print(
                f"  with {p.expected_interruptions:g} expected preemptions: checkpoint every "
                f"{p.checkpoint_interval_s / 60:.1f} min (Young/Daly); lost work ${p.lost_work_usd:,.2f}, "
                f"checkpoint stalls ${p.checkpoint_overhead_usd:,.2f}; spot in all ${p.spot_total_usd:,.2f}",
                highlight=False,
            )
