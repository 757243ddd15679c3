"""boto3 clients with the checks a user needs before a call fails deep inside botocore."""

from __future__ import annotations

from typing import Any

from spotray.errors import SpotrayError


class NoCredentialsError(SpotrayError):
    pass


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
