"""Training throughput of the spotray runtime on Ray Train against plain PyTorch DDP.

    python scripts/bench_throughput.py                  # the Hugging Face example, 2 workers, 3 repeats
    python scripts/bench_throughput.py --steps 100 --repeats 1
    python scripts/bench_throughput.py --config train/configs/gpu-1x.yaml  # NCCL, one worker per GPU

Same workload (examples/hf_lm/job.yaml's Hugging Face GPT-2, or --config's), same model,
global batch and micro-batches, same data order, same number of workers, same precision
(gloo on CPU, NCCL and `runtime.precision` on GPUs):
- spotray: `spotray.driver.trainer.train` (Ray Train, progress hub, the all-reduced loss, and
  asynchronous checkpoints every 50 steps, as in the demo);
- DDP: torch.multiprocessing + DistributedDataParallel, no Ray, no checkpoints.
Throughput is measured in steady state, from step --warmup to step --warmup + --steps
(spotray: from the checkpoints' recorded training wall time; DDP: rank 0's clock between
two barriers), with Ray shut down while DDP runs. Both use one intra-op thread per
worker, as Ray gives a 1-CPU worker (OMP_NUM_THREADS=1). Runs alternate; medians printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spotray.config import JobConfig, load_config
from spotray.runtime import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent


def bench_config(path: Path, storage: str, steps: int) -> JobConfig:
    cfg = load_config(path)
    return cfg.model_copy(
        update={
            "name": "bench-throughput",
            "optimizer": cfg.optimizer.model_copy(update={"steps": steps}),
            "checkpoint": cfg.checkpoint.model_copy(
                update={"storage_path": storage, "interval": 50, "keep": 100}
            ),
        }
    )


def run_spotray(cfg: JobConfig, warmup: int, steps: int) -> float:
    """Steady-state steps/s of one spotray run, from the checkpoints' wall times."""
    import ray
    from rich.console import Console

    from spotray.driver.trainer import train
    from spotray.runtime.storage import run_location

    train(cfg, warmup + steps, fresh=True, console=Console(quiet=True))
    ray.shutdown()
    run = run_location(cfg)
    meta = {c.step: c.meta for c in ckpt.scan(run)}
    return steps / (meta[warmup + steps]["wall_time_s"] - meta[warmup]["wall_time_s"])


def timed_ddp_steps(
    cfg: JobConfig, rank: int, world: int, warmup: int, steps: int, device: torch.device, where: str
) -> float:
    """Plain DDP training of the same workload on the same batches; steady-state steps/s."""
    from spotray.runtime.optim import autocast, default_optimizer, schedule
    from spotray.runtime.order import GlobalOrder, micro_batches, to_device
    from spotray.workload import load

    workload = load(cfg.workload.entrypoint, cfg.workload.args, where)
    torch.manual_seed(cfg.seed)
    model = workload.build_model().to(device)
    optimizer = workload.build_optimizer(model.parameters()) or default_optimizer(model, cfg.optimizer)
    scheduler = schedule(optimizer, cfg.optimizer)
    ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    amp = autocast(device, cfg.runtime.precision)
    batch = cfg.optimizer.global_batch_size
    order = GlobalOrder(workload.num_samples(), batch, cfg.seed)
    t0 = 0.0
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            dist.barrier()
            t0 = time.perf_counter()
        micro = micro_batches(
            order, step, rank, world, cfg.optimizer.micro_batch_size, workload.sample, workload.collate
        )
        for i, (size, part) in enumerate(micro):
            part = to_device(part, device)
            with contextlib.nullcontext() if i == len(micro) - 1 else ddp.no_sync():
                with amp:
                    loss = workload.loss(ddp, part)
                (loss * (size * world / batch)).backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.optimizer.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    dist.barrier()
    return steps / (time.perf_counter() - t0)


def _ddp_worker(
    rank: int, world: int, port: int, cfg_json: str, warmup: int, steps: int, out: str, where: str
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = JobConfig.model_validate_json(cfg_json)
    if cfg.scaling.use_gpu:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    rate = timed_ddp_steps(cfg, rank, world, warmup, steps, device, where)
    if rank == 0:
        Path(out).write_text(json.dumps({"steps_per_s": rate}))
    dist.destroy_process_group()


def run_ray_plain(cfg: JobConfig, warmup: int, steps: int) -> float:
    """The plain DDP loop inside Ray Train (no spotray): Ray's own share of the overhead."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from spotray.driver.trainer import start_ray

    def loop(config: dict) -> None:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        cfg = JobConfig.model_validate(config["cfg"])
        where = config["where"]
        rate = timed_ddp_steps(cfg, rank, world, warmup, steps, ray.train.torch.get_device(), where)
        if rank == 0:
            Path(config["out"]).write_text(json.dumps({"steps_per_s": rate}))

    start_ray(cfg, attach=False)
    out = Path(cfg.checkpoint.storage_path) / "ray-plain.json"
    TorchTrainer(
        loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "out": str(out), "where": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.max_workers, use_gpu=cfg.scaling.use_gpu),
        run_config=RunConfig(name="bench-ray-plain", storage_path=cfg.checkpoint.storage_path),
    ).fit()
    ray.shutdown()
    return json.loads(out.read_text())["steps_per_s"]


def tokens_per_sample(cfg: JobConfig) -> int | None:
    from spotray.workload import load

    return load(cfg.workload.entrypoint, cfg.workload.args).tokens_per_sample()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(cfg: JobConfig, warmup: int, steps: int, world: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.spawn(
            _ddp_worker,
            args=(world, free_port(), cfg.model_dump_json(), warmup, steps, out.name, os.getcwd()),
            nprocs=world,
        )
        return json.loads(Path(out.name).read_text())["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="steps before the clock starts (multiple of 50)"
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps (multiple of 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "examples" / "hf_lm" / "job.yaml",
        help="job config whose workload, batch, workers and use_gpu to measure",
    )
    parser.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md table row")
    args = parser.parse_args()
    if args.warmup % 50 or args.steps % 50:
        parser.error("--warmup and --steps must be multiples of the checkpoint interval (50)")

    config = args.config.resolve()
    os.chdir(config.parent)  # the workload imports from its config's folder, as `spotray train` run there
    with tempfile.TemporaryDirectory() as storage:
        cfg = bench_config(config, storage, args.warmup + args.steps)
        world = cfg.scaling.max_workers
        tokens_per_step = cfg.optimizer.global_batch_size * (tokens_per_sample(cfg) or 1)
        spot, ray_plain, ddp = [], [], []
        for r in range(args.repeats):
            spot.append(run_spotray(cfg, args.warmup, args.steps))
            ray_plain.append(run_ray_plain(cfg, args.warmup, args.steps))
            ddp.append(run_ddp(cfg, args.warmup, args.steps, world))
            print(
                f"repeat {r + 1}: spotray {spot[-1]:.2f}, Ray Train + plain loop {ray_plain[-1]:.2f}, "
                f"DDP {ddp[-1]:.2f} steps/s",
                flush=True,
            )
    s, p, d = statistics.median(spot), statistics.median(ray_plain), statistics.median(ddp)
    print(f"spotray:                 {s:.2f} steps/s ({s * tokens_per_step:,.0f} tok/s)")
    print(f"Ray Train + plain loop:  {p:.2f} steps/s ({p * tokens_per_step:,.0f} tok/s)")
    print(f"plain DDP (no Ray):      {d:.2f} steps/s ({d * tokens_per_step:,.0f} tok/s)")
    print(f"spotray / DDP: {s / d:.3f} (goal >= 0.95); spotray / Ray Train plain: {s / p:.3f}")
    if args.markdown:
        kind = f"{torch.cuda.get_device_name(0)} (NCCL)" if cfg.scaling.use_gpu else "CPU (gloo)"
        print(
            f"| {time.strftime('%Y-%m-%d')} | {platform.node()} | {world} x {kind} | "
            f"{s * tokens_per_step:,.0f} | {p * tokens_per_step:,.0f} | {d * tokens_per_step:,.0f} | "
            f"{s / d:.3f} | {s / p:.3f} |"
        )


if __name__ == "__main__":
    main()
