"""Where runs live: a local folder or S3, as one pyarrow filesystem and a path in it.

pyarrow's S3 filesystem ignores `AWS_ENDPOINT_URL`, so spotray builds it itself and
honours `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` and the config's `s3.endpoint_url`;
that is what makes MinIO, moto or any S3-compatible store work like AWS. Credentials
come from the AWS SDK's usual chain (environment, profile, instance profile).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from spotray.config import JobConfig, S3Section
from spotray.cost.aws import default_region


@dataclass(frozen=True)
class Location:
    """A path inside a pyarrow filesystem, with the URI people know it by."""

    fs: pafs.FileSystem
    path: str  # what pyarrow wants: "/abs/dir" or "bucket/key"
    uri: str  # what people read: "/abs/dir" or "s3://bucket/key"

    def join(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), posixpath.join(self.uri, *parts))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound


def s3_endpoint(s3: S3Section) -> str | None:
    return s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem(s3: S3Section) -> pafs.S3FileSystem:
    """An S3 filesystem for AWS or for the S3-compatible endpoint in the config/environment."""
    region = s3.region or default_region()
    endpoint = s3_endpoint(s3)
    if not endpoint:
        return pafs.S3FileSystem(region=region)
    url = urlparse(endpoint)
    return pafs.S3FileSystem(
        region=region,
        endpoint_override=url.netloc,
        scheme=url.scheme or "https",
        # S3-compatible stores are addressed by path (http://host/bucket/key).
        force_virtual_addressing=False,
    )


def resolve(uri: str, s3: S3Section) -> Location:
    """`s3://bucket/key` or a local path (made absolute) as a `Location`."""
    if uri.startswith("s3://"):
        key = uri.removeprefix("s3://").strip("/")
        return Location(s3_filesystem(s3), key, f"s3://{key}")
    path = str(Path(uri).expanduser().resolve())
    return Location(pafs.LocalFileSystem(), path, path)


def run_location(cfg: JobConfig) -> Location:
    """The run's folder: `<checkpoint.storage_path>/<name>`."""
    return resolve(cfg.checkpoint.storage_path, cfg.s3).join(cfg.name)


def export_s3_env(s3: S3Section) -> None:
    """The config's `s3:` settings as the AWS SDKs' environment variables, in this process:
    a workload that reads its own data from S3 (boto3, pyarrow with AWS_ENDPOINT_URL_S3)
    reaches the same store as spotray's checkpoints."""
    if s3.endpoint_url:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint_url
    if s3.region:
        os.environ["AWS_REGION"] = s3.region
