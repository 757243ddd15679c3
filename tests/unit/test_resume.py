"""Resuming: what one rank finds wrong with a checkpoint, every rank acts on. Real gloo
process groups on 127.0.0.1, no Ray."""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from spotray.runtime import checkpoint as ckpt
from spotray.runtime.resume import _agree
from tests.conftest import free_port


def _rank(rank: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=3)
    group = dist.new_group(backend="gloo")
    said = []
    for problem in (None, "rng-rank1.pt does not match its checksum"):
        try:
            _agree(problem if rank == 1 else None, group)
            said.append("ok")
        except ckpt.FileCheckError as err:
            said.append(str(err))
    (Path(folder) / f"rank{rank}.txt").write_text("\n".join(said))
    dist.destroy_process_group()


def test_a_file_one_rank_finds_damaged_fails_the_checkpoint_on_every_rank(tmp_path: Path) -> None:
    """Rank 1's own RNG file is damaged: ranks 0 and 2, which never read it, skip the
    checkpoint too (otherwise they would load it while rank 1 moved on to an older one)."""
    mp.spawn(_rank, args=(str(tmp_path), free_port()), nprocs=3)
    for rank in range(3):
        said = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert said == ["ok", "rng-rank1.pt does not match its checksum"], rank
