"""`model.precision`: CPU runs stay fp32 (bit-exact resumes); bf16 is there when asked for."""

from __future__ import annotations

import torch

from train.loop import autocast
from train.model import GPT
from train.presets import GPTConfig


def logits_dtype(precision: str) -> torch.dtype:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=256))
    x = torch.randint(0, 256, (2, 16))
    with autocast(torch.device("cpu"), precision):
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
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=256))
    x = torch.randint(0, 256, (2, 16))
    amp = autocast(torch.device("cpu"), "bf16")
    for _ in range(3):
        with amp:
            logits, _ = model(x, x)
        assert logits.dtype == torch.bfloat16
        assert model(x, x)[0].dtype == torch.float32  # and it is off again outside
