"""The two instance profiles a cluster from cluster.yaml runs under, shipped as policy files.

`spotray-checkpoints.json` (every node): the checkpoint bucket and nothing else.
`spotray-head.json` (the head, on top of that): what Ray's autoscaler needs, no more. It may
launch only instances tagged `ray-cluster-name=<this cluster>` and tag, stop or terminate only
those; it may pass only the worker role. A job runs on the head, so whatever the head's role
may do, any job may do: with a blanket `ec2:TerminateInstances` any job could end any instance
in the account.

`${ACCOUNT}`, `${CLUSTER}`, `${BUCKET}` and `${WORKER_ROLE}` are filled from the account, the
cluster file and `--bucket` when `spotray up --create-iam` creates them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from spotray.errors import ConfigError, SpotrayError

FOLDER = Path(__file__).resolve().parent
TRUST = FOLDER / "trust.json"
BUCKET_POLICY = FOLDER / "spotray-checkpoints.json"
HEAD_POLICY = FOLDER / "spotray-head.json"


@dataclass(frozen=True)
class Profiles:
    """The instance profiles a cluster file names: the head's and the workers'."""

    head: str
    workers: str

    def policies(self, name: str) -> list[Path]:
        """The policy files of one profile (its role carries each as an inline policy)."""
        return [BUCKET_POLICY, HEAD_POLICY] if name == self.head else [BUCKET_POLICY]


def _profile_name(node_config: dict[str, Any], node_type: str) -> str:
    profile = node_config.get("IamInstanceProfile") or {}
    name = profile.get("Name") or str(profile.get("Arn", "")).rpartition("/")[2]
    if not name:
        raise ConfigError(f"node type {node_type} names no IamInstanceProfile: spotray's nodes need one")
    return name


def profiles(config: dict[str, Any]) -> Profiles:
    """The head's profile and the one every worker type shares (cluster.yaml's layout)."""
    types = config["available_node_types"]
    head = config["head_node_type"]
    workers = {_profile_name(t["node_config"], n) for n, t in types.items() if n != head}
    if len(workers) != 1:
        raise ConfigError(f"worker node types name {len(workers)} instance profiles; spotray expects one")
    return Profiles(_profile_name(types[head]["node_config"], head), workers.pop())


def missing(found: Profiles, iam: Any) -> list[str]:
    """The profiles that do not exist in the account."""
    gone = []
    for name in dict.fromkeys([found.head, found.workers]):
        try:
            iam.get_instance_profile(InstanceProfileName=name)
        except iam.exceptions.NoSuchEntityException:
            gone.append(name)
    return gone


def policy_document(path: Path, *, account: str, cluster: str, bucket: str, worker_role: str) -> str:
    """One policy file with its placeholders filled; a placeholder left unfilled is an error."""
    text = Template(path.read_text()).substitute(
        ACCOUNT=account, CLUSTER=cluster, BUCKET=bucket, WORKER_ROLE=worker_role
    )
    json.loads(text)  # still JSON after the substitution
    return text


def create(found: Profiles, names: list[str], iam: Any, *, account: str, cluster: str, bucket: str) -> None:
    """Create each named profile: a role of that name that EC2 may assume, its inline
    policies from the files here, and the instance profile holding the role."""
    if not bucket or "/" in bucket or bucket.startswith("s3:"):
        raise ConfigError(f"--bucket takes a bucket name (the checkpoint bucket), got {bucket!r}")
    for name in names:
        try:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST.read_text())
        except iam.exceptions.EntityAlreadyExistsException:
            raise SpotrayError(
                f"IAM role {name} exists but instance profile {name} does not: add the role to a "
                "new instance profile, or delete the role, then run again"
            ) from None
        for path in found.policies(name):
            iam.put_role_policy(
                RoleName=name,
                PolicyName=path.stem,
                PolicyDocument=policy_document(
                    path, account=account, cluster=cluster, bucket=bucket, worker_role=found.workers
                ),
            )
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
