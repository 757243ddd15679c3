"""What spotray applies to every step: precision (CPU stays fp32, bf16 when asked) and an LR
schedule that follows the config, also after a resume with another `optimizer.lr`."""

from __future__ import annotations

import torch

from spotray.config import OptimizerSection
from spotray.runtime.optim import (
    apply_current_lr,
    autocast,
    default_optimizer,
    lr_factor,
    schedule,
    uses_bf16,
)
from train.gpt import GPTWorkload


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPTWorkload(n_layer=1, n_head=2, n_embd=32, block_size=16).build_model()


def logits_dtype(precision: str) -> torch.dtype:
    model = tiny_model()
    x = torch.randint(0, 256, (2, 16))
    with autocast(torch.device("cpu"), uses_bf16(torch.device("cpu"), precision)):
        logits, loss = model(x, x)
    assert loss is not None and torch.isfinite(loss)
    return logits.dtype


def test_auto_is_fp32_on_cpu() -> None:
    assert logits_dtype("auto") == torch.float32
    assert logits_dtype("fp32") == torch.float32


def test_bf16_when_asked() -> None:
    assert logits_dtype("bf16") == torch.bfloat16


def test_one_context_serves_every_micro_batch() -> None:
    """The loop decides the precision once and enters the same context at every forward."""
    model = tiny_model()
    x = torch.randint(0, 256, (2, 16))
    amp = autocast(torch.device("cpu"), bf16=True)
    for _ in range(3):
        with amp:
            logits, _ = model(x, x)
        assert logits.dtype == torch.bfloat16
        assert model(x, x)[0].dtype == torch.float32  # and it is off again outside


def trained_to(
    step: int, opt: OptimizerSection
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = tiny_model()
    optimizer = default_optimizer(model, opt)
    scheduler = schedule(optimizer, opt)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def resumed(saved: OptimizerSection, now: OptimizerSection) -> tuple[torch.optim.Optimizer, ...]:
    """An optimizer built from `now`, restored from one trained 40 steps with `saved`, as the
    loop restores it; returns (restored, saved) optimizers and the restored scheduler."""
    saved_opt, saved_sched = trained_to(40, saved)
    optimizer, scheduler = trained_to(0, now)
    peaks = [g["initial_lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(saved_opt.state_dict())
    scheduler.load_state_dict(saved_sched.state_dict())
    apply_current_lr(optimizer, scheduler, peaks)
    return optimizer, saved_opt, scheduler


def test_a_changed_lr_takes_effect_on_resume() -> None:
    """Saved at step 40 with lr 2e-3, resumed with 3e-3: the schedule follows 3e-3 from there,
    exactly as a run with 3e-3 all along would (the lr at step 40 and 41)."""
    old = OptimizerSection(lr=2e-3, min_lr=2e-4, steps=100, warmup_steps=10)
    new = old.model_copy(update={"lr": 3e-3})
    optimizer, _, scheduler = resumed(old, new)
    assert optimizer.param_groups[0]["lr"] == 3e-3 * lr_factor(new, 40)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 3e-3 * lr_factor(new, 41)


def test_an_unchanged_lr_is_restored_bit_for_bit() -> None:
    opt = OptimizerSection(lr=2e-3, min_lr=2e-4, steps=100, warmup_steps=10)
    optimizer, saved, _ = resumed(opt, opt)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in saved.param_groups]
