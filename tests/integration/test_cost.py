"""`spotray cost` against EC2 in moto's server mode on 127.0.0.1: spot and on-demand nodes,
launch times, a spot interruption, a scale-in; the ledger outlives the process.

moto cannot end a spot instance the way AWS does, so the interruption is made on moto's
backend in this process: the instance is terminated through the API, then given the state
reason AWS gives an interrupted spot instance (`Server.SpotInstanceTermination`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import boto3
import pytest

from spotray.cost.ledger import Ledger
from tests.conftest import no_aws_env, run_spotray

pytestmark = pytest.mark.integration


def launch(ec2, cluster: str, az: str, spot: bool, count: int = 1) -> list[str]:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    extra = {"InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}}
    tags = [{"Key": "ray-cluster-name", "Value": cluster}, {"Key": "ray-user-node-type", "Value": "gpu"}]
    reply = ec2.run_instances(
        ImageId=image,
        InstanceType="p3.8xlarge",
        MinCount=count,
        MaxCount=count,
        Placement={"AvailabilityZone": az},
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        **(extra if spot else {}),
    )
    return [i["InstanceId"] for i in reply["Instances"]]


def interrupt(ec2, instance_id: str) -> None:
    """End a spot instance as AWS does when it takes it back."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    ec2.terminate_instances(InstanceIds=[instance_id])
    instance = ec2_backends["123456789012"]["us-east-1"].get_instance(instance_id)
    instance.state_reason = StateReason(
        "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination"
    )


def cost(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    return run_spotray(["cost", "--ledger", str(tmp_path / "ledger.db"), *args], cwd=tmp_path, env=env)


def test_cost_reads_ec2_into_a_ledger_that_outlives_the_process(moto: str, tmp_path: Path) -> None:
    ec2 = boto3.client("ec2")
    preempted, running = launch(ec2, "c1", "us-east-1a", spot=True, count=2)
    [scaled_in] = launch(ec2, "c1", "us-east-1b", spot=False)
    launch(ec2, "other", "us-east-1a", spot=True)  # another cluster's node: not on this bill
    interrupt(ec2, preempted)
    ec2.terminate_instances(InstanceIds=[scaled_in])

    result = cost(tmp_path, "--cluster", "c1", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    rows = {r["instance_id"]: r for r in body["nodes"]}
    assert set(rows) == {preempted, running, scaled_in}
    assert (rows[preempted]["market"], rows[preempted]["end_reason"]) == ("spot", "preempted")
    assert (rows[running]["market"], rows[running]["end"]) == ("spot", "running")
    assert (rows[scaled_in]["market"], rows[scaled_in]["end_reason"]) == ("on-demand", "scaled in")
    assert body["totals"]["nodes"] == 3
    assert body["totals"]["on_demand_usd"] >= body["totals"]["cost_usd"]

    # Reading EC2 again adds nothing twice.
    assert cost(tmp_path, "--cluster", "c1", "--csv").returncode == 0
    with Ledger(tmp_path / "ledger.db") as ledger:
        assert len(ledger.nodes("c1")) == 3

    # The ledger outlives the process and the cluster: terminate everything, take AWS away
    # (no endpoint, no credentials), and the bill is still there.
    ec2.terminate_instances(InstanceIds=[running])
    bare = no_aws_env()
    offline = cost(tmp_path, "--cluster", "c1", "--offline", "--csv", env=bare)
    assert offline.returncode == 0, offline.stderr
    rows_csv = list(csv.DictReader(io.StringIO(offline.stdout)))
    assert {r["instance_id"] for r in rows_csv} == {preempted, running, scaled_in}


def test_cost_without_credentials_or_cluster_is_one_clear_line(moto: str, tmp_path: Path) -> None:
    bare = no_aws_env()
    bare["HOME"] = str(tmp_path)  # no ~/.aws either
    no_creds = cost(tmp_path, "--cluster", "c1", env=bare)
    assert no_creds.returncode == 1
    assert no_creds.stderr.strip().splitlines() == [
        "error: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "~/.aws/credentials or an instance profile)"
    ]
    nothing = cost(tmp_path, "--cluster", "nope")
    assert nothing.returncode == 1
    assert "no nodes of cluster 'nope'" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1
