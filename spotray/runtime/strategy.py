"""How the model is spread over the workers: DDP replicas or FSDP2 shards.

Under `ddp` every rank holds the whole model and optimizer and Ray Train's `prepare_model`
wraps it. Under `fsdp`, `fully_shard` is applied to each unit (the workload's
`shard_units`, or the blocks of its largest ModuleList) and then to the root, before the
optimizer is built, so the optimizer state is sharded too. bf16 then goes through FSDP2's
mixed-precision policy (bf16 compute and all-gathers, fp32 gradient reduction and master
weights) instead of autocast. Checkpoints are the same for both (spotray.runtime.tensors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray.train.torch
import torch

from spotray.workload import Workload, units_to_shard


def shard(model: torch.nn.Module, workload: Workload, bf16: bool, device: torch.device) -> None:
    """Apply FSDP2 in place to a model built on the CPU: each unit, then the root. Each
    unit's parameters move to `device` as they are sharded, so the device never holds the
    whole model at once."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))

    policy = (
        MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32
        )
        if bf16
        else MixedPrecisionPolicy()
    )
    for unit in units_to_shard(workload, model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def wrap(model: torch.nn.Module, strategy: str) -> torch.nn.Module:
    """The model the step calls: DDP around the replica, or the sharded model itself."""
    return ray.train.torch.prepare_model(model) if strategy == "ddp" else model


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Accumulate without communicating unless `sync` (the last micro-batch of a step)."""
    if sync:
        yield
    elif hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:  # one worker, not wrapped
        yield


def total_norm(norm: torch.Tensor) -> torch.Tensor:
    """The gradient norm as a plain tensor (FSDP's comes as a DTensor)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm
