"""A non-language workload: an MLP that tells two interleaved spirals apart.

The data set is synthetic and deterministic (a function of the index), so it needs no
download and every rank, on every restart, sees the same samples. Run from this folder:

    spotray train job.yaml
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from spotray import Workload


def spiral_point(index: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Point `index` of two spirals: even indices on one arm, odd on the other."""
    g = torch.Generator().manual_seed(index)
    label = index % 2
    t = torch.rand((), generator=g) * 3 * math.pi + 0.5
    x = torch.stack([t * torch.cos(t + math.pi * label), t * torch.sin(t + math.pi * label)]) / 10
    return x + noise * torch.randn(2, generator=g), torch.tensor(label)


class SpiralsMLP(Workload):
    """Binary classification with cross-entropy; `evaluate` reports held-out accuracy."""

    def __init__(self, size: int = 20_000, hidden: int = 64, depth: int = 3, noise: float = 0.02) -> None:
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size}")
        self.size, self.hidden, self.depth, self.noise = size, hidden, depth, noise
        held_out = [spiral_point(size + i, noise) for i in range(1000)]  # indices never trained on
        self.val_x = torch.stack([x for x, _ in held_out])
        self.val_y = torch.stack([y for _, y in held_out])

    def build_model(self) -> torch.nn.Module:
        layers: list[torch.nn.Module] = [torch.nn.Linear(2, self.hidden), torch.nn.ReLU()]
        for _ in range(self.depth - 1):
            layers += [torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(self.hidden, 2))

    def num_samples(self) -> int:
        return self.size

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return spiral_point(index, self.noise)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    def build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Plain SGD with momentum, to show the hook; spotray's schedule scales its lr."""
        return torch.optim.SGD(params, lr=0.5, momentum=0.9)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        accuracy = (model(self.val_x).argmax(dim=1) == self.val_y).float().mean()
        return {"val_accuracy": float(accuracy)}
