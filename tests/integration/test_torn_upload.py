"""A real training run killed in the middle of Ray Train's own upload of a checkpoint.

The workload is the spirals example with wide layers, so that each checkpoint's tensor
shard is big (105 MB on local disk, 51 MB on S3, where moto is slower) and Ray's background
upload of it takes long enough to be caught: the test waits until the upload of the last
checkpoint (step 20) has begun and its shard is not all there, then SIGKILLs the worker that
is uploading. The torn checkpoint must never be loaded: the restart removes it, names why,
resumes from checkpoint 10, and the run ends with checkpoint 20 written again, whole, and
listed once in Ray's own record of the run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import boto3
import pytest
import yaml

from spotray.config import S3Section
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import Location, resolve
from tests.conftest import REPO, deep_merge, spotray_env
from tests.integration.conftest import FAKE_AWS
from tests.integration.faults import train_killing_a_worker

pytestmark = pytest.mark.integration

TORN = 20
SHARD = tensors.shard_file(0)  # one worker: the one rank's tensors, model and momentum
WIDE_JOB = {
    "name": "wide",
    "seed": 0,
    "workload": {"entrypoint": "spirals:SpiralsMLP", "args": {"size": 2000, "depth": 3}},
    "optimizer": {
        "global_batch_size": 8,
        "micro_batch_size": 8,
        "steps": TORN,
        "lr": 0.05,
        "warmup_steps": 2,
    },
    "scaling": {"min_workers": 1, "max_workers": 1},
    "checkpoint": {"storage_path": "./runs", "interval": 10, "keep": 5},
    "failure": {"max_failures": 2},
}


def wide_job(folder: Path, storage_path: str, hidden: int) -> Path:
    """Two hidden layers of `hidden` x `hidden`: 8 * hidden**2 bytes of weights and momentum."""
    shutil.copy(REPO / "examples" / "spirals" / "spirals.py", folder / "spirals.py")
    job = deep_merge(
        WIDE_JOB, {"workload": {"args": {"hidden": hidden}}, "checkpoint": {"storage_path": storage_path}}
    )
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def assert_torn_checkpoint_never_loaded(text: str, run: Location) -> None:
    said = "".join(text.splitlines())  # the console wraps long lines, folding long paths
    torn = run.join(ckpt.dir_name(TORN)).uri
    assert f"removed unusable checkpoint {torn}: " in said, text
    # Checkpoint 10 may be whole in storage before Ray's controller has polled its report.
    restart = r"restart 1: from step 10( \(complete in storage, not yet registered by Ray\))? on 1 worker"
    assert re.search(restart, " ".join(said.split())), text
    assert f"done: wide at step {TORN}" in said, text
    stored = ckpt.scan(run)
    assert [(c.step, c.problem) for c in stored] == [(10, None), (TORN, None)]
    assert ckpt.verify(stored[-1]) is None  # written again, whole
    with run.fs.open_input_stream(f"{run.path}/{ckpt.RAY_SNAPSHOT}") as f:
        snapshot = json.loads(f.read())
    listed = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    assert listed == [ckpt.dir_name(s) for s in (10, TORN)], listed


def test_kill_during_the_upload_to_local_storage(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "wide"

    def uploading() -> bool:
        """The upload of checkpoint 20's shard has begun and is short of checkpoint 10's size."""
        whole, part = (run_dir / ckpt.dir_name(s) / SHARD for s in (10, TORN))
        try:
            return 0 < part.stat().st_size < whole.stat().st_size
        except FileNotFoundError:
            return False

    job = wide_job(tmp_path, "./runs", hidden=2560)
    text = train_killing_a_worker([str(job)], tmp_path, spotray_env(), uploading, "the upload", 0.001)
    assert_torn_checkpoint_never_loaded(text, resolve(str(run_dir), S3Section()))


def test_kill_during_the_upload_to_s3(moto: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="ckpt")
    prefix = f"runs/wide/{ckpt.dir_name(TORN)}/"

    def uploading() -> bool:
        """Some of checkpoint 20's files are on S3 (an object appears whole), its shard not yet."""
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="ckpt", Prefix=prefix).get("Contents", [])}
        return bool(keys) and prefix + SHARD not in keys

    env = spotray_env(**FAKE_AWS, AWS_ENDPOINT_URL_S3=moto)
    job = wide_job(tmp_path, "s3://ckpt/runs", hidden=1792)
    text = train_killing_a_worker([str(job)], tmp_path, env, uploading, "the upload to S3", interval=0.01)
    assert_torn_checkpoint_never_loaded(text, resolve("s3://ckpt/runs/wide", S3Section(endpoint_url=moto)))
