"""Checkpoint tensors through DCP: one format for DDP and FSDP, resharded on load, and an
index that cannot run code. Real gloo process groups on 127.0.0.1, no Ray."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import Location
from tests import ranks
from tests.conftest import free_port


def _load(rank: int, world: int, how: str, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    model, _, optimizer = ranks.setup(rank, world, how)
    run = Path(folder) / "run" / ckpt.dir_name(3)
    rest = torch.load(run / tensors.TRAINER_FILE, weights_only=True)["rest"]
    tensors.restore_training_state(model, optimizer, run, rest, dist.new_group(backend="gloo"))
    full = ranks.full(model, optimizer)  # a collective under FSDP
    if rank == 0:
        torch.save(full, Path(folder) / "loaded.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "saved,loaded",
    [(("fsdp", 2), ("fsdp", 1)), (("ddp", 2), ("fsdp", 2)), (("fsdp", 2), ("ddp", 1))],
    ids=["fsdp 2 -> fsdp 1", "ddp 2 -> fsdp 2", "fsdp 2 -> ddp 1"],
)
def test_a_checkpoint_loads_exactly_at_another_size_and_strategy(tmp_path: Path, saved, loaded) -> None:
    mp.spawn(ranks.save, args=(saved[1], saved[0], str(tmp_path), free_port()), nprocs=saved[1])
    run = tmp_path / "run" / ckpt.dir_name(3)
    names = sorted(p.name for p in run.iterdir())
    assert tensors.METADATA_FILE in names
    assert [n for n in names if n.endswith(".distcp")] == [tensors.shard_file(r) for r in range(saved[1])]
    stored = ckpt.inspect(Location(pafs.LocalFileSystem(), str(run), str(run)), 3)
    assert stored.complete and ckpt.verify(stored) is None

    mp.spawn(_load, args=(loaded[1], loaded[0], str(tmp_path), free_port()), nprocs=loaded[1])
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    got = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    for name, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][name][key], value), (name, key)
    assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_an_index_that_would_run_code_is_refused(tmp_path: Path) -> None:
    """Whoever can write the bucket writes `.metadata`: it must not run anything on load."""
    (tmp_path / tensors.METADATA_FILE).write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(
        tensors.CheckpointDataError, match=r"posix\.system is not part of a checkpoint's index"
    ):
        tensors.load({"model/w": torch.zeros(2)}, tmp_path, None)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_the_split_state_comes_back_whole() -> None:
    state = {"model": {"w": torch.ones(2)}, "optimizer": {"param_groups": [{"lr": 0.1, "params": ["w"]}]}}
    shards, rest = tensors.split(state)
    assert list(shards) == ["model/w"] and rest["model"]["w"] is None
    back = tensors.merge(shards, rest)
    assert back["optimizer"] == state["optimizer"] and torch.equal(back["model"]["w"], state["model"]["w"])
