"""How long a checkpoint blocks training: spotray's asynchronous path against a synchronous save.

    python scripts/bench_checkpoint.py                 # ~100M-parameter GPT, 5 rounds
    python scripts/bench_checkpoint.py --rounds 3 --n-layer 4

One process, CPU, no Ray: the quantity is what the training thread waits for.
- sync: a synchronous DCP save (`torch.distributed.checkpoint.save`) of model + optimizer into
  a staging folder, then the copy to storage that `ray.train.report(checkpoint_upload_mode=SYNC)`
  makes (pyarrow copy_files), both on the training thread, as in Ray Train's examples.
- async: spotray's `spotray.runtime.loop._start_checkpoint` (parameters and optimizer state
  copied to CPU memory by a background thread while the next step's forward and backward run,
  the update waiting for that copy; then written by the same thread; Ray's ASYNC upload
  follows in its own thread). Its stall is the training thread's time in `_start_checkpoint`
  plus its wait before the next update.
Each round trains a few steps, checkpoints once each way, and records the stall and the
step time while the background write runs. Prints medians, and a Markdown row with --markdown.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch

from spotray.config import BUILTIN_GPT, parse_config
from spotray.runtime import checkpoint as ckpt
from spotray.runtime import messages as msg
from spotray.runtime import tensors
from spotray.runtime.loop import _start_checkpoint
from spotray.runtime.optim import default_optimizer, schedule
from spotray.runtime.order import GlobalOrder, micro_batches
from spotray.runtime.resume import Progress, Trainee
from spotray.workload import load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-layer", type=int, default=14, help="14 x 768 wide: ~100M parameters")
    parser.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md table row")
    args = parser.parse_args()

    torch.manual_seed(0)
    workload_args = {"preset": "gpt2", "n_layer": args.n_layer, "block_size": 64}
    cfg = parse_config({"name": "bench", "workload": {"entrypoint": BUILTIN_GPT, "args": workload_args}})
    workload = load(BUILTIN_GPT, workload_args)
    model = workload.build_model()
    optimizer = default_optimizer(model, cfg.optimizer)
    scheduler = schedule(optimizer, cfg.optimizer)
    order = GlobalOrder(workload.num_samples(), global_batch=4, seed=0)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters, {torch.get_num_threads()} torch threads")

    step = 0

    waited = 0.0  # the training thread's wait for the snapshot, before an update

    def train_step(writer: ckpt.CheckpointWriter | None = None) -> float:
        nonlocal step, waited
        step += 1
        t0 = time.perf_counter()
        for _, part in micro_batches(order, step, 0, 1, 4, workload.sample, workload.collate):
            workload.loss(model, part).backward()
        if writer is not None:
            waited += writer.wait_snapshot()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    sync_stalls, async_stalls, plain_steps, busy_steps, sizes = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        fs = pafs.LocalFileSystem()
        writer = ckpt.CheckpointWriter(Path(tmp) / "async", rank=0)  # its buffers serve every round
        for _ in range(2):  # warm up allocator and caches
            train_step()
        for r in range(args.rounds):
            plain_steps.append(statistics.median(train_step() for _ in range(3)))

            # Synchronous: save, then upload, on the training thread.
            t0 = time.perf_counter()
            staged = Path(tmp) / f"sync-{r}"
            staged.mkdir()
            shards, _ = tensors.split(tensors.training_state(model, optimizer))
            tensors.save(shards, staged, None)
            fs.create_dir(str(storage / f"sync-{r}"))
            pafs.copy_files(
                str(staged), str(storage / f"sync-{r}"), source_filesystem=fs, destination_filesystem=fs
            )
            sync_stalls.append(time.perf_counter() - t0)
            sizes.append(sum(f.stat().st_size for f in staged.iterdir()))

            # Asynchronous: spotray's path; the upload would follow in Ray's thread.
            progress = Progress(step=step, samples=step * 4, elapsed_s=0.0, loss=0.0)
            report = msg.CheckpointReport(step, 0.0, step * 4, 0.0, 1, 0, 0.0)
            trainee = Trainee(model, optimizer, scheduler, workload)
            waited = 0.0
            started = _start_checkpoint(writer, trainee, progress, cfg, 1, 0, report, {})
            while writer.pending is not None and not writer.pending.done():
                busy_steps.append(train_step(writer) - waited)
                waited_here, waited = waited, 0.0
                started += waited_here
            writer.wait()
            async_stalls.append(started)

    sync_s, async_s = statistics.median(sync_stalls), statistics.median(async_stalls)
    plain_s = statistics.median(plain_steps)
    busy_s = statistics.median(busy_steps) if busy_steps else float("nan")
    print(f"checkpoint size: {statistics.median(sizes) / 1e9:.2f} GB")
    print(f"sync stall:  median {sync_s:.3f} s  ({', '.join(f'{s:.3f}' for s in sync_stalls)})")
    print(f"async stall: median {async_s:.3f} s  ({', '.join(f'{s:.3f}' for s in async_stalls)})")
    print(f"async / sync: {async_s / sync_s:.1%} (goal <= 10%)")
    print(f"step time: {plain_s:.3f} s alone, {busy_s:.3f} s while a write runs ({len(busy_steps)} steps)")
    # The write competes with training for CPU; what a checkpoint costs in all is the stall
    # plus the steps it slowed down.
    slowed = sum(b - plain_s for b in busy_steps) / args.rounds
    print(f"training time lost per checkpoint: sync {sync_s:.2f} s, async {async_s + slowed:.2f} s")
    if args.markdown:
        print(
            f"| {time.strftime('%Y-%m-%d')} | {platform.node()} | {params / 1e6:.0f}M | "
            f"{sync_s:.2f} s | {async_s:.3f} s | {async_s / sync_s:.1%} | {plain_s:.2f} s / {busy_s:.2f} s | "
            f"{sync_s:.2f} s / {async_s + slowed:.2f} s |"
        )


if __name__ == "__main__":
    main()
