"""Checkpoints and data on S3: moto in server mode on 127.0.0.1, reached over real HTTP.

pyarrow ignores AWS_ENDPOINT_URL, so this also checks that spotray builds its S3
filesystem from the environment itself (workers included).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import boto3
import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

from spotray.config import S3Section
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import resolve
from tests import ranks
from tests.conftest import free_port, run_spotray, spotray_env, write_config
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
    final = ckpt.inspect(run.join(ckpt.dir_name(STEPS)), STEPS)
    files = ckpt.CheckedFiles(final, tmp_path / "copy")
    for name in files.names():
        files.get(name)
    assert_bit_identical(tensors.read_state(files.folder), final_state(reference[0]))

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


WIDTH = 256  # 1.6 MB of shards: a few hundred 4 kB blocks


def _save_in_small_blocks(rank: int, world: int, folder: str, port: int) -> None:
    """An FSDP checkpoint whose shards span many checksum blocks (4 kB here, not 1 MB)."""
    ckpt.BLOCK = 4096
    ranks.save(rank, world, "fsdp", folder, port, WIDTH)


def _load_from_s3(rank: int, world: int, folder: str, port: int) -> None:
    """Rank `rank` of `world` loads the damaged checkpoint 4, then checkpoint 3, from S3
    through CheckedFiles; writes down what each did: the error, or the bytes read from S3
    and (rank 0) the whole state loaded."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    model, _, optimizer = ranks.setup(rank, world, "fsdp", WIDTH)
    group = dist.new_group(backend="gloo")
    outcomes = {}
    for step in (4, 3):
        location = resolve(f"s3://ckpt/runs/t/{ckpt.dir_name(step)}", S3Section())
        files = ckpt.CheckedFiles(ckpt.inspect(location, step), Path(folder) / f"cache-rank{rank}")
        rest = torch.load(files.get(tensors.TRAINER_FILE), weights_only=True)["rest"]
        try:
            tensors.restore_training_state(model, optimizer, files.folder, rest, group, files.get)
            outcomes[step] = {"fetched": files.fetched_bytes, "state": ranks.full(model, optimizer)}
        except ckpt.FileCheckError as err:
            outcomes[step] = {"error": str(err)}
    torch.save(outcomes, Path(folder) / f"outcome-rank{rank}.pt")
    dist.destroy_process_group()


def test_a_restore_from_s3_reads_and_checks_only_the_shards_each_rank_loads(s3: str, tmp_path: Path) -> None:
    """FSDP on 2 workers, checkpoints on S3, resumed on 2. A byte flipped in rank 1's shard
    of checkpoint 4 fails it on both ranks, also on rank 0, which does not read that byte.
    Checkpoint 3 then loads exactly, each rank reading its own shard and a few blocks of the
    other's (the optimizer's step counts, which DCP saves once), not the whole checkpoint."""
    mp.spawn(_save_in_small_blocks, args=(2, str(tmp_path), free_port()), nprocs=2)
    local = tmp_path / "run" / ckpt.dir_name(3)
    bucket = boto3.client("s3")
    # A byte in the middle of rank 1's biggest item: its half of a weight, which rank 0 does not load.
    stored = dcp.FileSystemReader(local).read_metadata().storage_data.values()
    item = max((i for i in stored if i.relative_path == tensors.shard_file(1)), key=lambda i: i.length)
    for path in local.iterdir():
        body = path.read_bytes()
        bucket.put_object(Bucket="ckpt", Key=f"runs/t/{ckpt.dir_name(3)}/{path.name}", Body=body)
        if path.name == tensors.shard_file(1):
            flipped = bytearray(body)
            flipped[item.offset + item.length // 2] ^= 0xFF
            body = bytes(flipped)
        bucket.put_object(Bucket="ckpt", Key=f"runs/t/{ckpt.dir_name(4)}/{path.name}", Body=body)

    mp.spawn(_load_from_s3, args=(2, str(tmp_path), free_port()), nprocs=2)
    outcomes = [torch.load(tmp_path / f"outcome-rank{r}.pt", weights_only=True) for r in range(2)]
    assert [o[4] for o in outcomes] == [{"error": f"{tensors.shard_file(1)} does not match its checksum"}] * 2
    whole = sum((local / name).stat().st_size for name in (tensors.TRAINER_FILE, tensors.METADATA_FILE))
    for rank, outcome in enumerate(outcomes):
        own = (local / tensors.shard_file(rank)).stat().st_size
        other = (local / tensors.shard_file(1 - rank)).stat().st_size
        read = outcome[3]["fetched"] - whole
        assert abs(read - own) < other / 10, (rank, read, own, other)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    gathered = outcomes[0][3]["state"]  # both ranks' parts
    for key, value in expected["model"].items():
        assert torch.equal(gathered["model"][key], value), key
    for name, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(gathered["optimizer"]["state"][name][key], value), (name, key)
