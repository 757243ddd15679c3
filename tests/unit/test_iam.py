"""The shipped IAM policies: what the head may do is bounded by the cluster's tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spotray.cluster import iam
from spotray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FILLED = dict(account="123456789012", cluster="team-a", bucket="ckpt", worker_role="spotray-checkpoints")


def statements(path: Path) -> list[dict]:
    return json.loads(iam.policy_document(path, **FILLED))["Statement"]


def actions(statement: dict) -> list[str]:
    found = statement["Action"]
    return [found] if isinstance(found, str) else found


def test_cluster_yaml_names_the_head_and_worker_profiles() -> None:
    found = iam.profiles(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    assert found == iam.Profiles(head="spotray-head", workers="spotray-checkpoints")
    assert found.policies("spotray-head") == [iam.BUCKET_POLICY, iam.HEAD_POLICY]
    assert found.policies("spotray-checkpoints") == [iam.BUCKET_POLICY]


def test_every_placeholder_is_filled_and_nothing_is_a_wildcard_action() -> None:
    for path in (iam.BUCKET_POLICY, iam.HEAD_POLICY):
        text = iam.policy_document(path, **FILLED)
        assert "${" not in text
        for statement in json.loads(text)["Statement"]:
            assert statement["Effect"] == "Allow"
            assert not any(a == "*" or a.endswith(":*") for a in actions(statement)), statement


def test_workers_reach_the_checkpoint_bucket_only() -> None:
    resources = {r for s in statements(iam.BUCKET_POLICY) for r in [s["Resource"]]}
    assert resources == {"arn:aws:s3:::ckpt", "arn:aws:s3:::ckpt/*"}
    assert {a for s in statements(iam.BUCKET_POLICY) for a in actions(s)} == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
    }


def test_the_head_ends_and_launches_only_its_own_clusters_instances() -> None:
    tagged = {"StringEquals": {"aws:ResourceTag/ray-cluster-name": "team-a"}}
    for statement in statements(iam.HEAD_POLICY):
        acts = set(actions(statement))
        if acts & {"ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"}:
            assert statement["Condition"] == tagged, statement
        if "ec2:CreateTags" in acts:  # at launch, or on the cluster's own instances
            assert statement["Condition"] in (tagged, {"StringEquals": {"ec2:CreateAction": "RunInstances"}})
        if "ec2:RunInstances" in acts and "instance/*" in json.dumps(statement["Resource"]):
            assert statement["Condition"] == {"StringEquals": {"aws:RequestTag/ray-cluster-name": "team-a"}}
        if "iam:PassRole" in acts:
            assert statement["Resource"] == "arn:aws:iam::123456789012:role/spotray-checkpoints"
    every = {a for s in statements(iam.HEAD_POLICY) for a in actions(s)}
    assert not {a for a in every if a.startswith(("iam:", "s3:"))} - {"iam:PassRole"}


def test_a_node_type_without_a_profile_is_refused() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    del config["available_node_types"]["g5_12xlarge_spot"]["node_config"]["IamInstanceProfile"]
    with pytest.raises(ConfigError, match="g5_12xlarge_spot names no IamInstanceProfile"):
        iam.profiles(config)
