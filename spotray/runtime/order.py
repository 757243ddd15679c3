"""Which samples make each step's global batch: a pure function of (seed, step).

The training set is walked in epochs, each a permutation of its indices drawn from
(seed, epoch); step k (from 1) takes positions (k-1)*B .. k*B-1 of that endless walk, B the
global batch. Every rank computes the same batch, takes its contiguous slice of it, and
gradient accumulation walks the slice in micro-batches. So a run that shrinks from 8 workers
to 5 and grows back, or is stopped and started again, sees exactly the samples of one that
never changed, whatever the workload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def rank_slice(global_batch: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of a global batch; shares differ by at most one."""
    return slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)


class GlobalOrder:
    """The sample indices of every step."""

    def __init__(self, num_samples: int, global_batch: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError(f"the training set is empty (num_samples() is {num_samples})")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self._epochs: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:  # a step spans two epochs at most (unless B > N)
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._epochs[epoch]

    def indices(self, step: int) -> np.ndarray:
        """The global batch of step `step` (1-based): `global_batch` sample indices."""
        positions = np.arange((step - 1) * self.global_batch, step * self.global_batch, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_samples)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._permutation(int(epoch))[offsets[mask]]
        return out

    def epoch_of(self, step: int) -> float:
        """How many passes over the training set the first `step` steps make."""
        return step * self.global_batch / self.num_samples


def micro_batches(
    order: GlobalOrder,
    step: int,
    rank: int,
    world_size: int,
    micro_batch: int,
    sample: Callable[[int], Any],
    collate: Callable[[list[Any]], Any],
) -> list[tuple[int, Any]]:
    """(size, collated batch) for each micro-batch of this rank's slice of step `step`."""
    mine = order.indices(step)[rank_slice(order.global_batch, rank, world_size)]
    return [
        (len(chunk), collate([sample(int(i)) for i in chunk]))
        for chunk in (mine[s : s + micro_batch] for s in range(0, len(mine), micro_batch))
    ]


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor in it moved to `device` (tuples, lists and dicts walked)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch
