"""cluster.yaml and cluster.local.yaml as Ray reads them, and Ray's own AWS node provider
launching cluster.yaml's worker types on EC2 in moto's server mode (127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml
from ray.autoscaler._private.aws.config import bootstrap_aws
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import (
    fill_node_type_min_max_workers,
    merge_setup_commands,
    prepare_config,
    validate_config,
)
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

from spotray.chaos.imds_server import FakeIMDS
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SPOT_TYPES = {
    "p3_8xlarge_spot": "p3.8xlarge",
    "g5_12xlarge_spot": "g5.12xlarge",
    "g4dn_12xlarge_spot": "g4dn.12xlarge",
}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_ray_accepts_cluster_yaml_and_fills_its_defaults() -> None:
    config = prepare_config(load("cluster.yaml"))  # Ray's default filling, then its schema
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and "InstanceMarketOptions" not in types["head"]["node_config"]
    for name, instance_type in SPOT_TYPES.items():
        node = types[name]
        assert node["node_config"]["InstanceType"] == instance_type
        assert (
            node["node_config"]["InstanceMarketOptions"]["SpotOptions"]["InstanceInterruptionBehavior"]
            == "terminate"
        )
        assert node["labels"] == {"market": "spot", "instance-type": instance_type}
        assert node["min_workers"] == 0
    fallback = types["p3_8xlarge_on_demand"]
    assert fallback["min_workers"] == 0 and "InstanceMarketOptions" not in fallback["node_config"]
    assert all(t["node_config"]["MetadataOptions"]["HttpTokens"] == "required" for t in types.values())
    # Every worker runs the watcher; the head gets the fast health check; nothing opens the dashboard.
    assert any("spotray watch" in c for c in config["worker_start_ray_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "health_check_failure_threshold" in head_start and "--dashboard-host=127.0.0.1" in head_start
    # Ray's token authentication on every node, the token `spotray up` makes copied to each.
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command or "spotray watch" in command:
            assert "RAY_AUTH_MODE=token" in command.split("ray start")[0].split("spotray watch")[0], command


def test_worker_start_labels_the_node_with_its_zone_from_imdsv2() -> None:
    """The worker's `ray start` line, run by bash against a loopback IMDS: Ray gets the AZ."""
    command = next(c for c in load("cluster.yaml")["worker_start_ray_commands"] if "ray start" in c)
    with FakeIMDS(zone="eu-west-1b") as imds:
        command = command.replace("http://169.254.169.254", imds.url)
        command = command[: command.index("ray start")] + 'echo "$RAY_NODE_ZONE $RAY_NODE_REGION"'
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["eu-west-1b", "eu-west-1"]
        assert imds.requests.get("/latest/api/token") == 1  # IMDSv2: a token first


def test_ray_accepts_cluster_local_yaml() -> None:
    # The 2.60 wheel lacks the fake_multinode defaults file that prepare_config reads, so the
    # local file is complete on its own: Ray's schema and node-type filling accept it as is.
    config = load("cluster.local.yaml")
    validate_config(config)
    merge_setup_commands(config)
    fill_node_type_min_max_workers(config)
    local_types = set(config["available_node_types"]) - {"ray.head.default"}
    assert local_types <= set(load("cluster.yaml")["available_node_types"])  # the same names


def test_ray_aws_provider_launches_every_worker_type(cluster_yaml_on_moto: Path) -> None:
    ec2 = boto3.client("ec2")
    text = cluster_yaml_on_moto.read_text()
    config = bootstrap_aws(prepare_config(yaml.safe_load(text)))  # key pair, subnets, security group
    provider = _get_node_provider(config["provider"], config["cluster_name"])

    workers = {k: v for k, v in config["available_node_types"].items() if k != "head"}
    for name, node_type in workers.items():
        tags = {
            TAG_RAY_NODE_KIND: "worker",
            TAG_RAY_USER_NODE_TYPE: name,
            TAG_RAY_NODE_NAME: f"ray-spotray-{name}",
        }
        provider.create_node(node_type["node_config"], tags, 1)

    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:ray-cluster-name", "Values": ["spotray"]}]
    )
    launched = {
        {t["Key"]: t["Value"] for t in i["Tags"]}[TAG_RAY_USER_NODE_TYPE]: i
        for page in pages
        for r in page["Reservations"]
        for i in r["Instances"]
    }
    assert set(launched) == set(workers)
    for name, instance in launched.items():
        spot = name.endswith("_spot")
        assert instance.get("InstanceLifecycle") == ("spot" if spot else None), name
        assert instance["InstanceType"] == workers[name]["node_config"]["InstanceType"]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
        assert instance["IamInstanceProfile"]["Arn"].endswith("instance-profile/spotray-checkpoints")
    # Those profiles are spotray's own (from spotray/cluster/iam/), bound to this cluster's tag.
    head_policy = boto3.client("iam").get_role_policy(RoleName="spotray-head", PolicyName="spotray-head")
    assert '"aws:ResourceTag/ray-cluster-name": "spotray"' in json.dumps(head_policy["PolicyDocument"])
    groups = {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    [group_id] = {g["GroupId"] for i in launched.values() for g in i["SecurityGroups"]}
    from_outside = [p for p in groups[group_id]["IpPermissions"] if p.get("IpRanges")]
    assert [(p["FromPort"], p["ToPort"]) for p in from_outside] == [(22, 22)]  # SSH only


def test_the_watcher_is_supervised_a_killed_one_comes_back(tmp_path: Path) -> None:
    """cluster.yaml's own watcher line, run as the node runs it (with its log in tmp_path):
    SIGKILL the watcher and a new one starts; SIGTERM it and the supervisor ends too."""
    import os
    import signal
    import sys

    import psutil

    from tests.conftest import free_port, spotray_env
    from tests.integration.faults import wait_for

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    [line] = [c for c in config["worker_start_ray_commands"] if "spotray watch" in c]
    assert line.startswith("RAY_AUTH_MODE=token nohup ") and line.endswith(" &")
    command = (
        line.removeprefix("RAY_AUTH_MODE=token nohup ")
        .removesuffix(" &")
        .replace("/tmp/spotray-watch.log", str(tmp_path / "w.log"))
    )
    command = command.replace(":6379", f":{free_port()}")  # a GCS that is not there: it waits
    env = spotray_env(
        RAY_HEAD_IP="127.0.0.1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    supervisor = subprocess.Popen(["sh", "-c", command], env=env, start_new_session=True)

    def watchers() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(supervisor.pid).children(recursive=True):
            try:
                if "watch" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    log = tmp_path / "w.log"

    def said(times: int) -> bool:  # the watcher's first line: it is up, its handlers set
        return log.exists() and log.read_text().count("cannot reach the Ray GCS") >= times

    try:
        wait_for(lambda: said(1), 30, "the watcher's first line")
        [first] = watchers()
        first.send_signal(signal.SIGKILL)
        wait_for(lambda: said(2), 30, "a new watcher's first line")
        assert "spotray watch exited (137): restarting in 1 s" in log.read_text()
        [second] = watchers()
        assert second.pid != first.pid
        second.send_signal(signal.SIGTERM)  # a clean stop ends the loop
        assert supervisor.wait(timeout=15) == 0
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL) if supervisor.poll() is None else None
