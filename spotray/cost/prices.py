"""What an instance costs: the bundled on-demand table and the spot price history.

On-demand prices change rarely, so a dated table ships with the package (`on_demand.json`,
with its source); `spotray prices --refresh` rewrites a user copy from the AWS Pricing API.
Spot prices change every few hours per instance type and AZ; a node is billed at the price in
force at each moment of its life, so the history is read for the node's whole lifetime.
`describe_spot_price_history` returns, besides the changes inside [start, end], the last
change before `start` (the price in force at `start`), which is what makes that possible.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from spotray.errors import SpotrayError

BUNDLED_TABLE = Path(__file__).with_name("on_demand.json")
LINUX = "Linux/UNIX"  # spot product description of the images spotray runs
PRICING_REGION = "us-east-1"  # the Pricing API answers from us-east-1 and ap-south-1 only


class UnknownInstanceTypeError(SpotrayError):
    exit_code = 2


def spotray_home() -> Path:
    return Path(os.environ.get("SPOTRAY_HOME", Path.home() / ".spotray"))


@dataclass(frozen=True)
class OnDemandTable:
    """USD per hour by region and instance type, with the date and source of the numbers."""

    as_of: str
    source: str
    prices: dict[str, dict[str, float]]

    def price(self, instance_type: str, region: str) -> float:
        """The on-demand $/h; an unknown type is an error that lists close known ones."""
        in_region = self.prices.get(region)
        if in_region is None:
            raise UnknownInstanceTypeError(
                f"no on-demand prices for region {region!r} (known: {', '.join(sorted(self.prices))}); "
                "run `spotray prices --refresh --region REGION`"
            )
        if instance_type not in in_region:
            known = sorted({t for table in self.prices.values() for t in table})
            close = difflib.get_close_matches(instance_type, known, n=4, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
            raise UnknownInstanceTypeError(f"unknown instance type {instance_type!r} in {region}: {hint}")
        return in_region[instance_type]

    def types(self, region: str) -> list[str]:
        return sorted(self.prices.get(region, {}))

    def to_json(self) -> str:
        return json.dumps({"as_of": self.as_of, "source": self.source, "prices": self.prices}, indent=2)


def user_table_path() -> Path:
    return spotray_home() / "on_demand.json"


def load_on_demand(path: Path | None = None) -> OnDemandTable:
    """The refreshed user table if there is one, else the bundled table."""
    if path is None:
        path = user_table_path() if user_table_path().exists() else BUNDLED_TABLE
    body = json.loads(path.read_text())
    return OnDemandTable(body["as_of"], body["source"], body["prices"])


def on_demand_from_pricing_api(pricing: Any, instance_types: Iterable[str], region: str) -> dict[str, float]:
    """On-demand Linux $/h of `instance_types` in `region`, from the AWS Pricing API."""
    found: dict[str, float] = {}
    for instance_type in instance_types:
        filters = [
            ("instanceType", instance_type),
            ("regionCode", region),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ]
        pages = pricing.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in filters],
        )
        for page in pages:
            for item in page["PriceList"]:
                price = _hourly_usd(json.loads(item) if isinstance(item, str) else item)
                if price is not None:
                    found[instance_type] = price
    return found


def _hourly_usd(product: dict[str, Any]) -> float | None:
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
            if dimension.get("unit") == "Hrs" and usd > 0:
                return usd
    return None


def refresh_on_demand(pricing: Any, region: str, instance_types: list[str] | None = None) -> OnDemandTable:
    """Re-read the region's prices from the Pricing API into the user table; returns it."""
    table = load_on_demand()
    types = instance_types or sorted({t for prices in table.prices.values() for t in prices})
    fresh = on_demand_from_pricing_api(pricing, types, region)
    if not fresh:
        names = ", ".join(types)
        raise SpotrayError(f"the Pricing API returned no Linux on-demand price for {names} in {region}")
    prices = {r: dict(p) for r, p in table.prices.items()}
    prices.setdefault(region, {}).update(fresh)
    today = datetime.now(timezone.utc).date().isoformat()
    refreshed = OnDemandTable(today, "AWS Pricing API (get_products), Linux, shared tenancy", prices)
    user_table_path().parent.mkdir(parents=True, exist_ok=True)
    user_table_path().write_text(refreshed.to_json())
    return refreshed


@dataclass(frozen=True, order=True)
class SpotPrice:
    time: float  # unix seconds at which this price took effect
    instance_type: str
    az: str
    price: float  # USD per hour


def spot_price_history(
    ec2: Any, instance_types: list[str], start: datetime, end: datetime, product: str = LINUX
) -> list[SpotPrice]:
    """Every spot price change in [start, end] plus the one in force at `start`, all pages."""
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=instance_types, ProductDescriptions=[product], StartTime=start, EndTime=end
    )
    return sorted(
        SpotPrice(r["Timestamp"].timestamp(), r["InstanceType"], r["AvailabilityZone"], float(r["SpotPrice"]))
        for page in pages
        for r in page["SpotPriceHistory"]
    )


def spot_prices_now(ec2: Any, instance_types: list[str]) -> dict[str, dict[str, float]]:
    """The spot price in force now, by instance type and AZ ({} for a type with none)."""
    now = datetime.now(timezone.utc)
    prices: dict[str, dict[str, float]] = {}
    for p in spot_price_history(ec2, instance_types, now - timedelta(seconds=1), now):  # oldest first
        prices.setdefault(p.instance_type, {})[p.az] = p.price
    return prices


@dataclass
class PriceSeries:
    """One instance type's spot price in one AZ over time: a step function."""

    changes: list[tuple[float, float]] = field(default_factory=list)  # (time, $/h), sorted

    def add(self, time: float, price: float) -> None:
        bisect.insort(self.changes, (time, price))

    def price_at(self, t: float) -> float | None:
        """The price in force at `t`: the newest change at or before it (None: unknown)."""
        i = bisect.bisect_right(self.changes, (t, float("inf")))
        return self.changes[i - 1][1] if i else None

    def segments(self, start: float, end: float) -> list[tuple[float, float, float | None]]:
        """[start, end) cut at every price change: (from, to, $/h in force or None)."""
        cuts = [t for t, _ in self.changes if start < t < end]
        bounds = [start, *cuts, end]
        return [(a, b, self.price_at(a)) for a, b in itertools.pairwise(bounds) if b > a]


def series_by_market(history: Iterable[SpotPrice]) -> dict[tuple[str, str], PriceSeries]:
    """History grouped into one series per (instance type, AZ)."""
    out: dict[tuple[str, str], PriceSeries] = {}
    for p in history:
        out.setdefault((p.instance_type, p.az), PriceSeries()).add(p.time, p.price)
    return out
