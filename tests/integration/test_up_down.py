"""`spotray up --dry-run` and `spotray down` against EC2 in moto's server mode (127.0.0.1).

moto can run instances but not SSH into them, so `up` is checked as far as its plan (the
launch itself is Ray's launcher), and `down` on worker nodes launched by Ray's own AWS node
provider from cluster.yaml, with the docker section taken out (stopping containers needs SSH).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml
from ray.autoscaler._private.aws.config import bootstrap_aws
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

from spotray.cost.ledger import Ledger
from tests.conftest import no_aws_env, run_spotray, spotray_env

pytestmark = pytest.mark.integration


def spotray(tmp_path: Path, *args: str, **env: str):
    return run_spotray([*args], cwd=tmp_path, env=spotray_env(HOME=str(tmp_path), **env))


def test_up_dry_run_prints_the_plan_and_its_price(cluster_yaml_on_moto: Path, tmp_path: Path) -> None:
    result = spotray(tmp_path, "up", str(cluster_yaml_on_moto), "--dry-run", COLUMNS="120")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("head", "p3_8xlarge_spot", "g5_12xlarge_spot", "g4dn_12xlarge_spot", "p3_8xlarge_on_demand"):
        assert name in out
    # moto's spot price is a $0.00001 placeholder, and it has none for p3.8xlarge (not in its
    # instance-type data), which is then counted at its on-demand price: the dearest mix
    # within max_workers 12 is 8 p3.8xlarge spot + 4 p3.8xlarge on demand, plus the head.
    assert "no price read" in out
    assert f"at most ${0.384 + 12 * 12.24:,.2f}/h" in out


def _one_line(result, code: int, text: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def test_up_bad_input_is_one_clear_line(cluster_yaml_on_moto: Path, tmp_path: Path) -> None:
    text = cluster_yaml_on_moto.read_text()
    wrong_type = tmp_path / "wrong-type.yaml"
    wrong_type.write_text(text.replace("InstanceType: g5.12xlarge", "InstanceType: g5.12xlarg"))
    _one_line(spotray(tmp_path, "up", str(wrong_type), "--dry-run"), 2, "unknown instance type 'g5.12xlarg'")

    wrong_region = tmp_path / "wrong-region.yaml"
    wrong_region.write_text(text.replace("region: us-east-1", "region: us-east-9"))
    _one_line(spotray(tmp_path, "up", str(wrong_region), "--dry-run"), 2, "unknown region 'us-east-9'")

    rejected = tmp_path / "rejected.yaml"
    rejected.write_text(text.replace("upscaling_speed: 1.0", "upscaling_speed: fast"))
    _one_line(spotray(tmp_path, "up", str(rejected), "--dry-run"), 2, "Ray rejects it at upscaling_speed")

    bare = no_aws_env(HOME=str(tmp_path))
    no_creds = run_spotray(["up", str(cluster_yaml_on_moto), "--yes"], cwd=tmp_path, env=bare)
    _one_line(no_creds, 1, "no AWS credentials found")
    assert not (tmp_path / ".ray" / "auth_token").exists()  # nothing made for a launch that failed


def test_up_dry_run_offline_plans_from_the_table_and_says_what_it_skipped(
    cluster_yaml_on_moto: Path, tmp_path: Path
) -> None:
    env = no_aws_env(HOME=str(tmp_path), COLUMNS="200")
    result = run_spotray(["up", str(cluster_yaml_on_moto), "--dry-run"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\n", "")
    assert f"at most ${0.384 + 12 * 12.24:,.2f}/h" in out  # every spot node at its on-demand price
    assert "no AWS credentials; not checked:" in out and "the instance profiles" in out


def test_up_names_a_missing_instance_profile_and_how_to_create_it(
    cluster_yaml_on_moto: Path, tmp_path: Path
) -> None:
    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName="spotray-head", RoleName="spotray-head")
    iam.delete_instance_profile(InstanceProfileName="spotray-head")
    _one_line(
        spotray(tmp_path, "up", str(cluster_yaml_on_moto), "--dry-run"),
        1,
        "instance profile(s) spotray-head do not exist: `spotray up --create-iam --bucket BUCKET`",
    )
    planned = spotray(tmp_path, "up", str(cluster_yaml_on_moto), "--dry-run", "--create-iam", "--bucket", "b")
    assert planned.returncode == 0, planned.stderr
    assert "would create instance profile(s) spotray-head" in planned.stdout.replace("\n", "")
    iam.get_role(RoleName="spotray-head")  # a dry run created nothing, removed nothing


def test_down_closes_the_ledger_then_terminates_every_node(
    cluster_yaml_on_moto: Path, tmp_path: Path
) -> None:
    config = yaml.safe_load(cluster_yaml_on_moto.read_text())
    del config["docker"]  # Ray stops containers over SSH, which moto's instances do not answer
    cluster_yaml_on_moto.write_text(yaml.safe_dump(config))
    booted = bootstrap_aws(prepare_config(config))
    provider = _get_node_provider(booted["provider"], booted["cluster_name"])
    for name in ("p3_8xlarge_spot", "p3_8xlarge_on_demand"):
        tags = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: name, TAG_RAY_NODE_NAME: name}
        provider.create_node(booted["available_node_types"][name]["node_config"], tags, 1)

    ledger_path = tmp_path / "ledger.db"
    result = spotray(tmp_path, "down", str(cluster_yaml_on_moto), "--yes", "--ledger", str(ledger_path))
    assert result.returncode == 0, result.stdout + result.stderr
    ec2 = boto3.client("ec2")
    states = [
        i["State"]["Name"]
        for r in ec2.describe_instances(Filters=[{"Name": "tag:ray-cluster-name", "Values": ["spotray"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]
    assert sorted(states) == ["terminated", "terminated"]
    with Ledger(ledger_path) as ledger:
        nodes = ledger.nodes("spotray")
    assert {(n.market, n.end_reason) for n in nodes} == {("spot", "torn down"), ("on-demand", "torn down")}
    assert all(n.end is not None for n in nodes)
    # The bill outlives the cluster, with no AWS at all.
    bare = no_aws_env(HOME=str(tmp_path))
    args = ["cost", "--cluster", "spotray", "--offline", "--json", "--ledger", str(ledger_path)]
    bill = run_spotray(args, tmp_path, bare)
    assert bill.returncode == 0, bill.stderr
    assert {r["end_reason"] for r in json.loads(bill.stdout)["nodes"]} == {"torn down"}
