"""Clusters up and down with the cost ledger kept: every node a cluster had ends up billed.

`up` records the cluster before Ray's launcher starts it; `down` closes every node in the
ledger before the teardown, so the bill is complete even if the teardown is interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotray.cluster import aws, local
from spotray.cluster.aws import ClusterPlan
from spotray.cluster.local import LocalCluster
from spotray.cost.aws import default_region
from spotray.cost.ledger import Ledger


@dataclass(frozen=True)
class TornDown:
    """What `down` did: the nodes closed in the ledger, the local processes stopped."""

    name: str
    closed: int
    ledger: Path
    stopped: int = 0
    warning: str | None = None  # the nodes could not be read from Ray first


def up_aws(cluster_yaml: Path, plan: ClusterPlan, ledger_path: Path | None) -> None:
    with Ledger(ledger_path) as ledger:
        ledger.add_cluster(plan.name, plan.region)
    aws.up(cluster_yaml)


def down_aws(config: dict[str, Any], cluster_yaml: Path, ec2: Any, ledger_path: Path | None) -> TornDown:
    name, region = config["cluster_name"], config["provider"]["region"]
    with Ledger(ledger_path) as ledger:
        ledger.add_cluster(name, region)  # also a cluster brought up by plain `ray up`
        ledger.sync_ec2(ec2, name)
        closed = ledger.finalize(name)
    aws.down(cluster_yaml)
    with Ledger(ledger_path) as ledger:
        ledger.sync_ec2(ec2, name)  # what ended before: preempted, scaled in
    return TornDown(name, closed, ledger.path)


def up_local(cluster_yaml: Path, ledger_path: Path | None, spot_capacity: int | None) -> LocalCluster:
    cluster = local.up_local(cluster_yaml)
    if spot_capacity is not None:
        local.set_spot_capacity(cluster, spot_capacity)
    with Ledger(ledger_path) as ledger:
        ledger.add_cluster(cluster.name, default_region(), cluster.started)
    return cluster


def down_local(cluster: LocalCluster, ledger_path: Path | None) -> TornDown:
    from spotray.cluster.status import read_status

    warning = None
    with Ledger(ledger_path) as ledger:
        try:  # the nodes Ray knew, into the ledger before they go
            read_status(cluster.gcs_address, cluster.name, ledger)
        except Exception as err:  # a cluster half gone is still to be stopped
            warning = f"nodes not read from Ray: {str(err).splitlines()[0]}"
        closed = ledger.finalize(cluster.name)
    stopped = local.down_local(cluster)
    return TornDown(cluster.name, closed, ledger.path, stopped, warning)
