"""Does the job fit? The model's size and the workers against this machine or the cluster,
before Ray Train starts.

A model too big for its workers otherwise fails after Ray started, on every worker, under
`max_failures` retries, with a Ray traceback. The parameter count comes from building the
model on PyTorch's meta device (no memory), so even the check itself cannot run out.
"""

from __future__ import annotations

import math
from typing import Any

import psutil

from spotray.config import JobConfig
from spotray.errors import ConfigError

# Training state per parameter: fp32 weights, gradients and AdamW's two moments (mixed
# precision keeps fp32 masters). Activations come on top and depend on the batch.
STATE_BYTES_PER_PARAMETER = 16
# What a Ray Train worker process takes before its model: Python, torch, Ray (~0.4 GB RSS
# measured on CPU workers of this project's tests).
WORKER_PROCESS_BYTES = 0.4e9
GB = 1e9


def count_parameters(workload: Any) -> int | None:
    """The model's parameter count, built on the meta device; None when the workload's
    `build_model` cannot build there (the smoke check then builds it for real)."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = workload.build_model()
    except Exception:  # a model that needs real memory to build: no estimate, no refusal
        return None
    if not isinstance(model, torch.nn.Module):
        return None
    return sum(p.numel() for p in model.parameters())


def check_fits(cfg: JobConfig, parameters: int, workers_here: bool) -> None:
    """Refuse in one line a model this machine cannot build, or a local run whose workers
    cannot hold it. `workers_here`: the workers run on this machine (a local Ray)."""
    free = psutil.virtual_memory().available
    build = 4 * parameters  # the smoke check builds the model in fp32 on this CPU
    size = f"the model has {parameters:,} parameters"
    if build > free:
        raise ConfigError(
            f"{size} ({build / GB:,.1f} GB in fp32); this machine has {free / GB:,.1f} GB free to build it"
        )
    if not workers_here:
        return  # the cluster's workers: check_cluster_fits, once attached
    workers = cfg.scaling.max_workers
    if cfg.scaling.use_gpu:
        _check_gpu(size, _training_state(cfg, parameters))
    state = _host_state(cfg, parameters)
    need = workers * (state + WORKER_PROCESS_BYTES)
    if need > free:
        hint = "lower scaling.max_workers"
        if state > WORKER_PROCESS_BYTES:
            hint += ", use scaling.strategy fsdp, or a smaller model"
        raise ConfigError(
            f"{size}: {workers} worker(s) on this machine need about {need / GB:,.1f} GB "
            f"({state / GB:,.2f} GB of training state and {WORKER_PROCESS_BYTES / GB:.1f} GB of "
            f"process each), {free / GB:,.1f} GB is free: {hint}"
        )


def check_cluster_fits(cfg: JobConfig, parameters: int, nodes: list[dict[str, Any]]) -> None:
    """Refuse in one line a model that no node of the cluster able to host a worker has the
    memory for. `nodes`: `ray.nodes()` of the cluster the run attached to.

    Only nodes up now are judged: with none that can host a worker (an autoscaling pool
    still at zero), the check passes and the autoscaler's nodes decide.
    """
    hosts = [n["Resources"] for n in nodes if n.get("Alive") and cfg.scaling.slots(n["Resources"])]
    if not hosts:
        return
    need = _host_state(cfg, parameters) + WORKER_PROCESS_BYTES
    largest = max(h.get("memory", 0.0) for h in hosts)
    if largest < need:
        raise ConfigError(
            f"the model has {parameters:,} parameters: a worker needs about {need / GB:,.1f} GB of "
            f"memory, and the cluster's nodes that can host one have at most {largest / GB:,.1f} GB "
            "(Ray's memory resource): use scaling.strategy fsdp on more workers, bigger nodes, or a "
            "smaller model"
        )


def _training_state(cfg: JobConfig, parameters: int) -> int:
    """Bytes of training state per worker: FSDP shards it over the workers, DDP replicates it."""
    shards = cfg.scaling.max_workers if cfg.scaling.strategy == "fsdp" else 1
    return math.ceil(STATE_BYTES_PER_PARAMETER * parameters / shards)


def _host_state(cfg: JobConfig, parameters: int) -> int:
    """Bytes a worker holds in host memory: its training state on CPU workers; on GPU workers
    the fp32 model, which each still builds on the CPU before moving it."""
    return 4 * parameters if cfg.scaling.use_gpu else _training_state(cfg, parameters)


def _check_gpu(size: str, state: int) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("scaling.use_gpu is true, but this machine has no CUDA GPU for its local workers")
    total = torch.cuda.get_device_properties(0).total_memory
    if state > total:
        raise ConfigError(
            f"{size}: {state / GB:,.1f} GB of training state per GPU, the GPU has {total / GB:,.1f} GB: "
            "use scaling.strategy fsdp on more workers, or a smaller model"
        )
