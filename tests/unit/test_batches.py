"""The data order depends only on (seed, step); world size only changes who computes what."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.batches import BatchOrder, rank_slice
from train.model import GPT
from train.presets import GPTConfig

TOKENS = np.arange(5000, dtype=np.int64) % 251


def test_same_seed_and_step_same_windows() -> None:
    a = BatchOrder(TOKENS, block_size=16, global_batch=12, seed=3)
    b = BatchOrder(TOKENS, block_size=16, global_batch=12, seed=3)
    assert np.array_equal(a.offsets(7), b.offsets(7))
    assert not np.array_equal(a.offsets(7), a.offsets(8))
    assert not np.array_equal(a.offsets(7), BatchOrder(TOKENS, 16, 12, seed=4).offsets(7))


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8, 12])
def test_rank_slices_partition_the_global_batch(world: int) -> None:
    order = BatchOrder(TOKENS, block_size=16, global_batch=12, seed=0)
    whole = torch.cat([x for x, _ in order.micro_batches(4, 0, 1, micro_batch=12)])
    parts = [x for rank in range(world) for x, _ in order.micro_batches(4, rank, world, micro_batch=2)]
    assert all(len(x) <= 2 for x in parts)
    assert torch.equal(torch.cat(parts), whole)
    sizes = [len(range(12)[rank_slice(12, r, world)]) for r in range(world)]
    assert sum(sizes) == 12 and max(sizes) - min(sizes) <= 1


def test_targets_are_inputs_shifted_by_one() -> None:
    order = BatchOrder(TOKENS, block_size=16, global_batch=4, seed=0)
    for x, y in order.micro_batches(1, 0, 1, micro_batch=4):
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_too_little_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than one window"):
        BatchOrder(np.arange(10), block_size=16, global_batch=2, seed=0)


def test_loss_scaling_makes_gradients_world_size_independent() -> None:
    """The loop's scaling, summed over simulated ranks as DDP would (then / world)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=256))
    order = BatchOrder(TOKENS, block_size=16, global_batch=10, seed=1)

    def grads(world: int) -> torch.Tensor:
        total = [torch.zeros_like(p) for p in model.parameters()]
        for rank in range(world):
            model.zero_grad()
            for x, y in order.micro_batches(2, rank, world, micro_batch=3):
                _, loss = model(x, y)
                (loss * (len(x) * world / 10)).backward()
            for t, p in zip(total, model.parameters(), strict=True):
                t += p.grad / world  # DDP averages over ranks
        return torch.cat([t.flatten() for t in total])

    reference = grads(1)
    for world in (2, 3, 4, 7):
        torch.testing.assert_close(grads(world), reference, rtol=1e-5, atol=1e-7)
