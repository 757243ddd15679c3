"""What a restart reads of a checkpoint on S3, and how long that takes, per rank.

    python scripts/bench_restore.py                    # 4-layer gpt2-medium-wide GPT, FSDP, W = 2
    python scripts/bench_restore.py --n-layer 8 --workers 4

An FSDP checkpoint written by W gloo processes (spotray's writer: DCP shards, manifests with
block checksums) is put into a moto S3 server on 127.0.0.1; the same W ranks then restore it
twice, timed from the first byte read to the tensors in place:
- spotray: `CheckedFiles`: each rank fetches and checks the byte ranges its part of the load
  reads (`trainer.pt` and the index whole), DCP reads them from the sparse local copy;
- whole copies (the baseline): rank 0 checks every file against its checksum, then every
  rank copies every file to local disk and DCP reads from there.
Prints one Markdown row per way: bytes read from S3 per rank and seconds, medians over
rounds. No Ray; moto's loopback bandwidth is not S3's: the bytes carry over, the seconds
show the order of things.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_fsdp import port  # noqa: E402  (this folder)

from spotray.config import BUILTIN_GPT, S3Section, parse_config  # noqa: E402
from spotray.runtime import checkpoint as ckpt  # noqa: E402
from spotray.runtime import strategy, tensors  # noqa: E402
from spotray.runtime.optim import default_optimizer  # noqa: E402
from spotray.runtime.storage import resolve  # noqa: E402
from spotray.workload import load  # noqa: E402

URI = "s3://bench/run/" + ckpt.dir_name(1)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The GPT sharded over this process group, one step taken (AdamW's state exists)."""
    workload_args = {"preset": "gpt2-medium", "n_layer": args.n_layer, "block_size": 64}
    cfg = parse_config({"name": "bench", "workload": {"entrypoint": BUILTIN_GPT, "args": workload_args}})
    workload = load(BUILTIN_GPT, workload_args)
    torch.manual_seed(0)
    model = workload.build_model()
    strategy.shard(model, workload, bf16=False, device=torch.device("cpu"))
    optimizer = default_optimizer(model, cfg.optimizer)
    x = torch.randint(0, 256, (1, 64))
    model(x, x)[1].backward()
    optimizer.step()
    return model, optimizer


def save(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, optimizer = build(args)
    shards, rest = tensors.split(tensors.training_state(model, optimizer))
    writer = ckpt.CheckpointWriter(Path(out) / f"staging-{rank}", rank, dist.new_group(backend="gloo"))
    files = {tensors.TRAINER_FILE: {"rest": rest}} if rank == 0 else {}
    meta = {"format": ckpt.FORMAT_VERSION, "step": 1, "world_size": world} if rank == 0 else None
    writer.start(1, writer.buffers.copy(shards), files, meta, stall_s=0.0, metrics={})
    folder = writer.wait().folder
    dist.barrier()
    for item in folder.iterdir():  # every rank's part into one folder, as Ray's upload does
        (Path(out) / "checkpoint").mkdir(exist_ok=True)
        item.rename(Path(out) / "checkpoint" / item.name)
    dist.destroy_process_group()


def restore(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    model, optimizer = build(args)
    target, _ = tensors.split(tensors.training_state(model, optimizer))
    stored = ckpt.inspect(resolve(URI, S3Section()), 1)
    cache = Path(out) / f"cache-{rank}"
    results: dict[str, list[tuple[float, int]]] = {"spotray": [], "whole copies": []}
    for _ in range(args.rounds):
        for way in results:
            dist.barrier()
            t0 = time.perf_counter()
            if way == "spotray":
                files = ckpt.CheckedFiles(stored, cache)
                tensors.load(target, files.folder, group, files.get)
                read = files.fetched_bytes
            else:
                read = whole_copies(stored, cache, rank)
                dist.barrier()  # the others waited for rank 0's check
                tensors.load(target, cache, group)
            results[way].append((time.perf_counter() - t0, read))
            shutil.rmtree(cache, ignore_errors=True)
    torch.save(results, Path(out) / f"result-{rank}.pt")
    dist.destroy_process_group()


def whole_copies(stored: ckpt.StoredCheckpoint, cache: Path, rank: int) -> int:
    """The baseline's reads: rank 0 checks every file, every rank copies every file."""
    size = sum(i.size for i in stored.location.fs.get_file_info(pafs.FileSelector(stored.location.path)))
    read = 0
    if rank == 0:
        assert ckpt.verify(stored) is None
        read += size
    dist.barrier()
    cache.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(stored.location.path, str(cache), source_filesystem=stored.location.fs)
    return read + size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-layer", type=int, default=4, help="layers of 1024 wide (gpt2-medium's width)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    moto_port = port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    server.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    fake = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    os.environ.update(fake, AWS_ENDPOINT_URL=endpoint)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-restore-") as out:
            mp.spawn(save, args=(args.workers, port(), args, out), nprocs=args.workers)
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="bench")
            total = 0
            for path in (Path(out) / "checkpoint").iterdir():
                s3.upload_file(str(path), "bench", f"run/{ckpt.dir_name(1)}/{path.name}")
                total += path.stat().st_size
            mp.spawn(restore, args=(args.workers, port(), args, out), nprocs=args.workers)
            results = [torch.load(Path(out) / f"result-{r}.pt") for r in range(args.workers)]
    finally:
        server.stop()
    print(f"checkpoint {total / 1e6:.0f} MB, W = {args.workers}, medians of {args.rounds} rounds")
    print("| way | read from S3 per rank (rank 0, 1, ...) | in all | seconds per rank |")
    print("|---|---|---|---|")
    for way in results[0]:
        reads = [statistics.median(r for _, r in ranks[way]) for ranks in results]
        secs = [statistics.median(s for s, _ in ranks[way]) for ranks in results]
        cells = [
            way,
            ", ".join(f"{r / 1e6:.0f} MB" for r in reads),
            f"{sum(reads) / total:.2f} x the checkpoint",
            ", ".join(f"{s:.2f} s" for s in secs),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
