"""Checkpoints and data on S3: moto in server mode on 127.0.0.1, reached over real HTTP.

pyarrow ignores AWS_ENDPOINT_URL, so this also checks that spotray builds its S3
filesystem from the environment itself (workers included).
"""

from __future__ import annotations

import re
from pathlib import Path

import boto3
import pytest

from spotray.config import S3Section
from spotray.runtime import checkpoint as ckpt
from spotray.runtime.storage import resolve
from tests.conftest import run_spotray, spotray_env, write_config
from tests.integration.conftest import FAKE_AWS, STEPS, assert_bit_identical, final_state
from tests.integration.faults import train_killing_a_worker
from train.data import BUILTIN_PYDOC, BYTE_VOCAB, load_tokens, write_token_shards

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(moto: str) -> str:
    """The moto server with a bucket `ckpt`; its endpoint URL."""
    boto3.client("s3", endpoint_url=moto).create_bucket(Bucket="ckpt")
    return moto


def test_train_on_s3_data_kill_a_worker_resume_from_s3(reference, s3: str, tmp_path: Path) -> None:
    # The same bytes as builtin:pydoc, as Parquet shards on S3: the trajectory must not change.
    ids = load_tokens(BUILTIN_PYDOC).ids
    shards = resolve("s3://ckpt/data/pydoc", S3Section(endpoint_url=s3))
    write_token_shards(ids, shards.path, BYTE_VOCAB, 200_000, shards.fs)

    config = write_config(
        tmp_path,
        {
            "workload": {"args": {"source": "s3://ckpt/data/pydoc/"}},
            "checkpoint": {"storage_path": "s3://ckpt/runs"},
        },
    )
    env = spotray_env(**FAKE_AWS, AWS_ENDPOINT_URL_S3=s3)
    run = resolve("s3://ckpt/runs", S3Section(endpoint_url=s3)).join("t")

    def checkpoint_60_on_s3() -> bool:
        return any(c.step >= 60 and c.complete for c in ckpt.scan(run))

    text = train_killing_a_worker([str(config)], tmp_path, env, checkpoint_60_on_s3, "checkpoint 60 on S3")
    resumed = re.search(r"restart 1: from step (\d+)", text)
    assert resumed and int(resumed.group(1)) >= 60, text
    assert f"checkpoint   s3://ckpt/runs/t/{ckpt.dir_name(STEPS)}" in text
    assert not (tmp_path / "runs").exists()  # nothing went to local disk

    # The final state, read back from S3, equals the local uninterrupted run's.
    local_copy = tmp_path / "copy" / "runs" / "t" / ckpt.dir_name(STEPS)
    ckpt.local_folder(run.join(ckpt.dir_name(STEPS)), local_copy)
    assert_bit_identical(final_state(tmp_path / "copy"), final_state(reference[0]))

    # A second run finds the finished run on S3 and has nothing to do.
    again = run_spotray(["train", str(config)], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert f"already at step {STEPS}" in again.stdout


def test_endpoint_from_config_key(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    loc = resolve("s3://ckpt/probe", S3Section(endpoint_url=s3))
    with loc.fs.open_output_stream(f"{loc.path}/hello.txt") as f:
        f.write(b"hi")
    body = boto3.client("s3", endpoint_url=s3).get_object(Bucket="ckpt", Key="probe/hello.txt")["Body"]
    assert body.read() == b"hi"
