"""Real gloo ranks for tests, no Ray: a small model trained a few steps on 1..N processes
(DDP or FSDP), its checkpoint written as the loop writes it, its state gathered whole."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import strategy, tensors
from spotray.workload import Workload


class Blocks(torch.nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(3))
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def setup(
    rank: int, world: int, how: str, width: int = 6
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Blocks(width)
    if how == "fsdp":
        strategy.shard(model, Workload(), bf16=False, device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if how == "ddp" else model
    return model, wrapped, optimizer


def full(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole state, gathered: what must survive a save and a load at another size."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optimizer": optim_state}


def save(rank: int, world: int, how: str, folder: str, port: int, width: int = 6) -> None:
    """Rank `rank`'s part: checkpoint step 3 into `folder`/run, the whole state into
    `folder`/expected.pt (for torch.multiprocessing.spawn)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    model, wrapped, optimizer = setup(rank, world, how, width)
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, width)  # each rank its own half of the batch
        wrapped(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    shards, rest = tensors.split(tensors.training_state(model, optimizer))
    writer = ckpt.CheckpointWriter(Path(folder) / f"rank{rank}", rank, dist.new_group(backend="gloo"))
    files = {tensors.TRAINER_FILE: {"rest": rest}} if rank == 0 else {}
    meta = {"format": ckpt.FORMAT_VERSION, "step": 3, "world_size": world} if rank == 0 else None
    writer.start(3, writer.buffers.copy(shards), files, meta, stall_s=0.0, metrics={})
    written = writer.wait().folder
    state = full(model, optimizer)
    if rank == 0:
        torch.save(state, Path(folder) / "expected.pt")
    dist.barrier()
    run = Path(folder) / "run" / written.name
    run.mkdir(parents=True, exist_ok=True)
    for item in written.iterdir():  # the upload: every rank's part into one folder
        item.rename(run / item.name)
    dist.destroy_process_group()
