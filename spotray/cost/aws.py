"""boto3 clients with the checks a user needs before a call fails deep inside botocore."""

from __future__ import annotations

import os
from typing import Any

from spotray.errors import SpotrayError


class NoCredentialsError(SpotrayError):
    pass


def default_region() -> str:
    """Where a command with no region of its own works: boto3's variables, else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(service: str, region: str) -> Any:
    """A boto3 client; no credentials is a one-line error, not a botocore traceback later.

    Endpoints follow boto3's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`.
    """
    import boto3

    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        raise NoCredentialsError(
            "no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials or an instance profile)"
        )
    return session.client(service, region_name=region)
