"""What FSDP buys and costs: memory per worker, the checkpoint stall, resharding on resume.

    python scripts/bench_fsdp.py                       # gpt2-medium-shaped GPT, W = 1, 2, 4
    python scripts/bench_fsdp.py --n-layer 4 --workers 1 2

Real gloo process groups on 127.0.0.1 (CUDA and NCCL when there are GPUs for every worker),
no Ray. For each world size W:
- memory: after one step, this rank's bytes of parameters + gradients + optimizer state,
  from the tensors themselves; against the goal 1.15 x total / W + the largest unit (on a
  GPU also `torch.cuda.max_memory_allocated`, which includes the gathered units and the
  activations). W = 1 is what DDP holds on every worker.
- stall: what the training thread waits for at a checkpoint: spotray's sharded save (buffers
  snapshotted at once; parameters and optimizer state copied by the writer while the next
  forward and backward run, the update waiting for the copy; DCP writes in the background)
  against a synchronous DCP save.
- resume: loading a checkpoint written at the same W against one written at another.
Prints one Markdown row per W.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spotray.config import BUILTIN_GPT, parse_config  # noqa: E402
from spotray.runtime import checkpoint as ckpt  # noqa: E402
from spotray.runtime import strategy, tensors  # noqa: E402
from spotray.runtime.optim import default_optimizer  # noqa: E402
from spotray.workload import load, units_to_shard  # noqa: E402


def nbytes(values: list[torch.Tensor]) -> int:
    return sum(tensors.local_tensor(v).numel() * v.element_size() for v in values)


def build(args: argparse.Namespace, device: torch.device):
    workload_args = {"preset": "gpt2-medium", "n_layer": args.n_layer, "block_size": args.block}
    cfg = parse_config({"name": "bench", "workload": {"entrypoint": BUILTIN_GPT, "args": workload_args}})
    workload = load(BUILTIN_GPT, workload_args)
    torch.manual_seed(0)
    model = workload.build_model()
    total = sum(p.numel() for p in model.parameters())
    unit = max(sum(p.numel() for p in u.parameters()) for u in units_to_shard(workload, model))
    strategy.shard(model, workload, bf16=False, device=device)
    return workload, model, default_optimizer(model, cfg.optimizer), total, unit


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.device_count() >= world
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    _, model, optimizer, total, unit = build(args, device)
    x = torch.randint(0, 256, (args.micro, args.block), device=device)
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    states = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    params = list(model.parameters())
    mine = nbytes(params) + nbytes([p.grad for p in params if p.grad is not None]) + nbytes(states)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    optimizer.zero_grad(set_to_none=True)

    base = Path(out)
    sync_s, stall_s = [], []
    shards, _ = tensors.split(tensors.training_state(model, optimizer))
    writer = ckpt.CheckpointWriter(base / f"staging-{world}-{rank}", rank, group)
    for r in range(args.rounds):
        dist.barrier()
        t0 = time.perf_counter()
        shards, _ = tensors.split(tensors.training_state(model, optimizer))
        tensors.save(shards, base / f"sync-{world}-{r}", group)
        sync_s.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        shards, _ = tensors.split(tensors.training_state(model, optimizer))
        changing = tensors.changed_by_the_update(shards, model)
        frozen = writer.buffers.copy({k: v for k, v in shards.items() if k not in changing})
        live = {k: v for k, v in shards.items() if k in changing}
        writer.start(r, frozen, {}, None, 0.0, {}, live=live)
        started = time.perf_counter() - t0
        _, loss = model(x, x)  # the next step's forward and backward, while the copy runs
        loss.backward()
        stall_s.append(started + writer.wait_snapshot())
        optimizer.zero_grad(set_to_none=True)
        shutil.rmtree(writer.wait().folder)  # disk: a gpt2-medium checkpoint is 4.8 GB
        if r > 0:  # round 0's stays, for the resume at other world sizes
            dist.barrier()
            if rank == 0:
                shutil.rmtree(base / f"sync-{world}-{r}")

    # Resume: every world size has written its checkpoint; load this one's and another's.
    dist.barrier()
    other = world * 2  # written earlier in this run (bigger worlds go first)
    load_s = {}
    for written in (world, other):
        folder = base / f"sync-{written}-0"
        if not (folder / tensors.METADATA_FILE).exists():
            continue
        dist.barrier()
        t0 = time.perf_counter()
        target, _ = tensors.split(tensors.training_state(model, optimizer))
        tensors.load(target, folder, group)
        load_s[written] = time.perf_counter() - t0
    if rank == 0:
        torch.save(
            {
                "total": total,
                "unit": unit,
                "mine": mine,
                "peak": peak,
                "sync": statistics.median(sync_s),
                "stall": statistics.median(stall_s),
                "load": load_s,
            },
            base / f"result-{world}.pt",
        )
    dist.destroy_process_group()


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n-layer", type=int, default=24, help="24 x 1024 wide: gpt2-medium's shape")
    parser.add_argument("--block", type=int, default=64, help="tokens per sequence (memory is the states')")
    parser.add_argument("--micro", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"| W | params | per-rank states | goal: 1.15 x total / W + unit | {' | '.join(COLUMNS)} |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as out:
        for world in sorted(args.workers, reverse=True):  # bigger first: smaller ones load theirs
            mp.spawn(worker, args=(world, port(), args, out), nprocs=world)
            print(row(world, torch.load(Path(out) / f"result-{world}.pt", weights_only=True)))


COLUMNS = ["sync DCP save", "sharded save stall", "stall / sync", "resume same W", "resume other W"]


def row(world: int, r: dict) -> str:
    """One Markdown row: memory against its goal, the save's stall, the resume times."""
    goal = 1.15 * 16 * r["total"] / world + 16 * r["unit"]
    peak = f" (CUDA peak {r['peak'] / 1e9:.2f} GB)" if r["peak"] else ""
    verdict = "met" if r["mine"] <= goal else "MISSED"
    other = ", ".join(f"{v:.2f} s (from W={k})" for k, v in r["load"].items() if k != world) or "-"
    same = r["load"].get(world, float("nan"))
    cells = [
        str(world),
        f"{r['total'] / 1e6:.0f}M",
        f"{r['mine'] / 1e9:.2f} GB{peak}",
        f"{goal / 1e9:.2f} GB: {verdict}",
        f"{r['sync']:.2f} s",
        f"{r['stall']:.3f} s",
        f"{r['stall'] / r['sync']:.1%}",
        f"{same:.2f} s",
        other,
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
