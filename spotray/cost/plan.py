"""`spotray plan`: what a run would cost on demand and on spot, before it starts.

With an interruption rate R (per hour, for the whole job: any node's loss stops the step)
and a checkpoint cost C (seconds the training stalls), the checkpoint interval is Young/Daly's
sqrt(2 C M) with M = 1/R, and the expected waste is what that interval implies: each
interruption redoes half an interval of work and waits one restart; each checkpoint stalls
C seconds. Both are paid at the spot rate, on every node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spotray.elastic.interval import young_daly_seconds


@dataclass(frozen=True)
class Plan:
    instance_type: str
    count: int
    hours: float
    spot_price: float
    on_demand_price: float
    on_demand_usd: float
    spot_usd: float
    savings_usd: float
    savings_pct: float
    checkpoint_interval_s: float | None = None
    expected_interruptions: float | None = None
    lost_work_usd: float | None = None  # redone work and restarts
    checkpoint_overhead_usd: float | None = None
    spot_total_usd: float | None = None  # spot plus both kinds of waste

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def make_plan(
    instance_type: str,
    count: int,
    hours: float,
    spot_price: float,
    on_demand_price: float,
    interruptions_per_hour: float | None = None,
    checkpoint_seconds: float | None = None,
    restart_seconds: float = 0.0,
) -> Plan:
    on_demand = on_demand_price * count * hours
    spot = spot_price * count * hours
    base = dict(
        instance_type=instance_type,
        count=count,
        hours=hours,
        spot_price=spot_price,
        on_demand_price=on_demand_price,
        on_demand_usd=on_demand,
        spot_usd=spot,
        savings_usd=on_demand - spot,
        savings_pct=100 * (on_demand - spot) / on_demand if on_demand else 0.0,
    )
    if not interruptions_per_hour or checkpoint_seconds is None:
        return Plan(**base)
    interval = young_daly_seconds(checkpoint_seconds, 3600 / interruptions_per_hour)
    interruptions = interruptions_per_hour * hours
    fleet_rate = spot_price * count / 3600  # $ per second of the whole fleet
    lost = interruptions * (interval / 2 + restart_seconds) * fleet_rate
    overhead = (hours * 3600 / interval) * checkpoint_seconds * fleet_rate if interval else 0.0
    return Plan(
        **base,
        checkpoint_interval_s=interval,
        expected_interruptions=interruptions,
        lost_work_usd=lost,
        checkpoint_overhead_usd=overhead,
        spot_total_usd=spot + lost + overhead,
    )
