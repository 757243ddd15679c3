"""`spotray up` / `spotray down`: the checks a user wants before Ray's cluster launcher runs,
the plan with its price, and the cost ledger kept right around the launcher's work.

Ray's launcher (`ray.autoscaler.sdk`) does the launching and the tearing down; spotray adds
what it lacks for spot: a preflight that fails in one line (no credentials, unknown region or
instance type, an AZ without a subnet, a config Ray rejects) instead of deep in bootstrap,
the plan in dollars (on-demand and current spot prices, the cluster's most expensive hour),
and the ledger: `up` registers the cluster, `down` closes every node in it as torn down
*before* the nodes go, so nothing is lost if the teardown is interrupted.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spotray.cost.prices import OnDemandTable, spot_prices_now
from spotray.errors import ConfigError, SpotrayError


@dataclass(frozen=True)
class NodeTypePlan:
    name: str
    instance_type: str
    market: str  # spot | on-demand
    min_workers: int
    max_workers: int
    on_demand_price: float
    spot_prices: dict[str, float] = field(default_factory=dict)  # AZ -> $/h now

    @property
    def price_now(self) -> float:
        """What one node of this type costs per hour now (spot: the dearest AZ, to be safe)."""
        if self.market == "spot" and self.spot_prices:
            return max(self.spot_prices.values())
        return self.on_demand_price


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    region: str
    head: NodeTypePlan
    workers: list[NodeTypePlan]
    max_workers: int  # the cluster-wide cap
    unchecked: list[str] = field(default_factory=list)  # what needed EC2 and was not read

    def max_usd_per_hour(self) -> float:
        """The head plus the dearest worker mix the caps allow."""
        left, total = self.max_workers, self.head.price_now
        for node in sorted(self.workers, key=lambda n: n.price_now, reverse=True):
            take = min(node.max_workers, left)
            total += take * node.price_now
            left -= take
        return total


def load_cluster_config(path: Path) -> dict[str, Any]:
    """The cluster YAML as Ray fills and validates it; a config Ray rejects is one line."""
    import jsonschema

    from spotray.ray_compat.autoscaler import prepare_and_validate

    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    try:
        config = prepare_and_validate(raw)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        raise ConfigError(f"{path}: Ray rejects it at {where}: {err.message}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{path}: Ray rejects it: {err}") from None
    if config["provider"]["type"] != "aws":
        raise ConfigError(f"{path}: provider.type is {config['provider']['type']!r}; spotray up is for aws")
    return config


def preflight(config: dict[str, Any], ec2: Any | None, table: OnDemandTable) -> ClusterPlan:
    """Check region, instance types and subnets against EC2; price the node types.

    Without EC2 (`ec2` None: no credentials) the plan comes from the bundled on-demand table
    and `unchecked` says what it could not check.
    """
    provider = config["provider"]
    region = provider["region"]
    _check_region(region)
    types = {
        name: node["node_config"].get("InstanceType", "")
        for name, node in config["available_node_types"].items()
    }
    zones = [z.strip() for z in str(provider.get("availability_zone", "")).split(",") if z.strip()]
    spot_types = sorted({t for name, t in types.items() if _market(config, name) == "spot"})
    unchecked = []
    if ec2 is None:
        unchecked = [
            "a subnet in every listed AZ",
            "spot prices (spot nodes are counted at their on-demand price)",
            "the instance profiles",
        ]
        spot: dict[str, dict[str, float]] = {}
    else:
        _check_instance_types(ec2, set(types.values()), table, region)
        _check_subnets(ec2, config, zones, region)
        spot = {
            itype: {az: p for az, p in by_az.items() if not zones or az in zones}
            for itype, by_az in (spot_prices_now(ec2, spot_types) if spot_types else {}).items()
        }

    def plan(name: str) -> NodeTypePlan:
        node = config["available_node_types"][name]
        return NodeTypePlan(
            name=name,
            instance_type=types[name],
            market=_market(config, name),
            min_workers=int(node.get("min_workers", 0)),
            max_workers=int(node.get("max_workers", 0)),
            on_demand_price=table.price(types[name], region),
            spot_prices=spot.get(types[name], {}) if _market(config, name) == "spot" else {},
        )

    head = config["head_node_type"]
    workers = [plan(name) for name in config["available_node_types"] if name != head]
    return ClusterPlan(
        config["cluster_name"], region, plan(head), workers, int(config["max_workers"]), unchecked
    )


def _check_region(region: str) -> None:
    import boto3

    regions = boto3.Session().get_available_regions("ec2")  # from botocore's own data, offline
    if region not in regions:
        close = difflib.get_close_matches(region, regions, n=3)
        raise ConfigError(
            f"unknown region {region!r}" + (f": did you mean {', '.join(close)}?" if close else "")
        )


def _check_instance_types(ec2: Any, types: set[str], table: OnDemandTable, region: str) -> None:
    """A type is known if EC2 describes it or the bundled price table lists it (a real type by
    construction; moto, for one, has no p3.8xlarge in its instance-type data)."""
    from botocore.exceptions import ClientError

    listed = {t for prices in table.prices.values() for t in prices}
    for instance_type in sorted(types - listed):
        try:
            ec2.describe_instance_types(InstanceTypes=[instance_type])
        except ClientError as err:
            if err.response["Error"]["Code"] != "InvalidInstanceType":
                raise
            close = difflib.get_close_matches(instance_type, sorted(listed), n=3, cutoff=0.6)
            hint = f": did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown instance type {instance_type!r} in {region}{hint}") from None


def _check_subnets(ec2: Any, config: dict[str, Any], zones: list[str], region: str) -> None:
    if any("SubnetIds" in n["node_config"] for n in config["available_node_types"].values()):
        return  # the file names its subnets; Ray checks them
    for zone in zones:
        found = ec2.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [zone]}])
        if not found["Subnets"]:
            raise ConfigError(f"no subnet in availability zone {zone} ({region}): create one or drop the AZ")


def _market(config: dict[str, Any], name: str) -> str:
    options = config["available_node_types"][name]["node_config"].get("InstanceMarketOptions", {})
    return "spot" if options.get("MarketType") == "spot" else "on-demand"


def up(path: Path) -> dict[str, Any]:
    """Bring the cluster up (or update it) through Ray's launcher."""
    from ray.autoscaler.sdk import create_or_update_cluster

    try:
        return create_or_update_cluster(str(path), no_config_cache=True)
    except Exception as err:  # the launcher's own failures, as one line
        raise SpotrayError(f"ray's cluster launcher failed: {err}") from err


def down(path: Path) -> None:
    """Tear the cluster down through Ray's launcher (every node, head included)."""
    from ray.autoscaler.sdk import teardown_cluster

    teardown_cluster(str(path))
