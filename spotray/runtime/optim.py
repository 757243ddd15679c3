"""What spotray applies to every workload's step: the LR schedule, the default optimizer, precision."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from spotray.config import OptimizerSection


def lr_factor(opt: OptimizerSection, step: int) -> float:
    """LR multiplier after `step` updates: linear warmup, then cosine from lr to min_lr."""
    if step < opt.warmup_steps:
        return (step + 1) / (opt.warmup_steps + 1)
    progress = min(1.0, (step - opt.warmup_steps) / max(1, opt.steps - opt.warmup_steps))
    floor = opt.min_lr / opt.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_optimizer(
    model: torch.nn.Module, opt: OptimizerSection, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW from `optimizer:`, with weight decay on matrices only (nanoGPT's grouping).

    `fused`: one kernel for the whole update (CUDA: the gpt2 preset's raw step on an H200 ran
    at 526k tok/s against 508k with `foreach`); otherwise the multi-tensor `foreach` kernels.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), **kind)


def schedule(optimizer: torch.optim.Optimizer, opt: OptimizerSection) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule over the optimizer's own learning rates (each group's peak)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(opt, s))


def apply_current_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, peaks: list[float]
) -> None:
    """After a restore: the schedule follows the peaks of the optimizer built from the current
    config, not those saved in the checkpoint, so a changed `optimizer.lr` takes effect."""
    scheduler.base_lrs = list(peaks)
    for group, peak, factor in zip(optimizer.param_groups, peaks, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = peak
        group["lr"] = peak * factor(scheduler.last_epoch)  # as LambdaLR computes it


def uses_bf16(device: torch.device, precision: str) -> bool:
    """bf16 compute (fp32 weights and optimizer state) on GPUs that have it when `auto`; fp32
    on CPU, where bf16 is slower and resumes must be bit-exact."""
    return precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision under DDP. Decided once per run: the context can be
    entered again after each exit (not nested)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
