"""The global batch order: a pure function of (seed, step).

Every step draws the same `global_batch_size` windows whatever the world size, each rank
takes its contiguous slice of them, and gradient accumulation walks that slice in
micro-batches. That is what makes a run that shrinks from 8 workers to 5 and grows back
follow the trajectory of one that never changed, and what makes a resumed run exact.
"""

from __future__ import annotations

import numpy as np
import torch


def rank_slice(global_batch: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of a global batch; shares differ by at most one."""
    return slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)


class BatchOrder:
    """The windows of every step, drawn from a generator seeded with (seed, step) only."""

    def __init__(self, tokens: np.ndarray, block_size: int, global_batch: int, seed: int) -> None:
        if len(tokens) <= block_size + 1:
            raise ValueError(f"the data has {len(tokens)} tokens, fewer than one window of {block_size + 1}")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.block_size = block_size
        self.global_batch = global_batch
        self.seed = seed

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.global_batch)

    def micro_batches(
        self, step: int, rank: int, world_size: int, micro_batch: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) micro-batches of this rank's slice of step `step`'s batch."""
        mine = self.offsets(step)[rank_slice(self.global_batch, rank, world_size)]
        out = []
        for start in range(0, len(mine), micro_batch):
            idx = torch.from_numpy(mine[start : start + micro_batch])[:, None] + torch.arange(
                self.block_size + 1
            )
            window = self.tokens[idx]
            out.append((window[:, :-1], window[:, 1:]))
        return out
