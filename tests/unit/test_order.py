"""The data order depends only on (seed, step); world size only changes who computes what."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spotray.runtime.order import GlobalOrder, micro_batches, rank_slice, to_device
from train.gpt import GPTWorkload


def test_same_seed_and_step_same_batch() -> None:
    a, b = GlobalOrder(1000, 12, seed=3), GlobalOrder(1000, 12, seed=3)
    assert np.array_equal(a.indices(7), b.indices(7))
    assert not np.array_equal(a.indices(7), a.indices(8))
    assert not np.array_equal(a.indices(7), GlobalOrder(1000, 12, seed=4).indices(7))


def test_every_sample_once_per_epoch_across_step_boundaries() -> None:
    """N = 100 samples, B = 12: epochs end mid-step; each epoch is a permutation."""
    order = GlobalOrder(100, 12, seed=0)
    walk = np.concatenate([order.indices(step) for step in range(1, 51)])  # 600 = 6 epochs
    for epoch in range(6):
        assert sorted(walk[epoch * 100 : (epoch + 1) * 100]) == list(range(100))
    assert not np.array_equal(walk[:100], walk[100:200])  # a new order each epoch
    assert order.epoch_of(50) == 6.0


def test_a_batch_larger_than_the_data_set() -> None:
    order = GlobalOrder(5, 12, seed=0)
    counts = np.bincount(np.concatenate([order.indices(s) for s in range(1, 6)]), minlength=5)
    assert counts.tolist() == [12] * 5  # 60 positions over 5 samples: 12 epochs


def test_empty_data_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        GlobalOrder(0, 4, seed=0)


def _sample(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([i, i + 1]), torch.tensor(i % 3)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8, 12])
def test_rank_slices_partition_the_global_batch(world: int) -> None:
    order = GlobalOrder(500, 12, seed=0)
    collate = torch.utils.data.default_collate

    def xs(rank: int, world: int, micro: int) -> list[torch.Tensor]:
        return [x for _, (x, _) in micro_batches(order, 4, rank, world, micro, _sample, collate)]

    whole = torch.cat(xs(0, 1, 12))
    parts = [x for rank in range(world) for x in xs(rank, world, 2)]
    assert all(len(x) <= 2 for x in parts)
    assert torch.equal(torch.cat(parts), whole)
    sizes = [len(range(12)[rank_slice(12, r, world)]) for r in range(world)]
    assert sum(sizes) == 12 and max(sizes) - min(sizes) <= 1


def test_to_device_walks_tuples_lists_and_dicts() -> None:
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(1)]), "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["n"] == 3 and isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert torch.equal(moved["x"], batch["x"])


def test_loss_scaling_makes_gradients_world_size_independent() -> None:
    """The loop's scaling, summed over simulated ranks as DDP would (then / world)."""
    workload = GPTWorkload(preset="tiny", n_layer=1, n_head=2, n_embd=16, block_size=16)
    torch.manual_seed(0)
    model = workload.build_model()
    order = GlobalOrder(workload.num_samples(), 10, seed=1)

    def grads(world: int) -> torch.Tensor:
        total = [torch.zeros_like(p) for p in model.parameters()]
        for rank in range(world):
            model.zero_grad()
            for size, part in micro_batches(order, 2, rank, world, 3, workload.sample, workload.collate):
                (workload.loss(model, part) * (size * world / 10)).backward()
            for t, p in zip(total, model.parameters(), strict=True):
                t += p.grad / world  # DDP averages over ranks
        return torch.cat([t.flatten() for t in total])

    reference = grads(1)
    for world in (2, 3, 4, 7):
        torch.testing.assert_close(grads(world), reference, rtol=1e-5, atol=1e-7)
