"""The public workload API: what a user brings, and how spotray loads and checks it.

A workload is the model, an indexable training set and a loss. spotray owns everything
else (which samples make step k's global batch, accumulation, DDP, precision, the LR
schedule, checkpoints, notices, elastic resizing), so its guarantees hold for every
workload. The config names one as `workload.entrypoint: pkg.module:Class` with
`workload.args`, the constructor's keyword arguments.

This module imports torch only inside functions: `spotray train --help` and config
validation stay fast.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spotray.errors import WorkloadError

if TYPE_CHECKING:
    import torch


class Workload:
    """Subclass this: the four methods without a default are required.

    The constructor takes `workload.args` as keyword arguments and runs on the driver (for a
    smoke check before Ray starts) and on every worker. Keep it cheap: load data lazily.
    Everything must be deterministic: `sample(i)` is the same on every rank and every
    restart, and `build_model()` draws its initial weights from torch's global generator,
    which spotray seeds with the config's `seed` before calling it.
    """

    def build_model(self) -> torch.nn.Module:
        """The model, on the CPU; spotray moves it to the worker's device and wraps it."""
        raise NotImplementedError

    def num_samples(self) -> int:
        """How many samples the training set has; spotray draws indices below this."""
        raise NotImplementedError

    def sample(self, index: int) -> Any:
        """Sample `index`: a tensor, or a tuple or dict of them; collated by `collate`."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of a micro-batch, a scalar. `model` is the wrapped model (DDP):
        call it, as its forward is where the gradients are synchronized."""
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Any:
        """A micro-batch from samples; default: torch's `default_collate`."""
        from torch.utils.data import default_collate

        return default_collate(samples)

    def build_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        """Another optimizer than spotray's AdamW from `optimizer:` (None: spotray's).

        spotray's LR schedule (warmup, cosine) scales the learning rate given here."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The workload's own state (plain values and tensors), saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Numbers worth watching, computed at each periodic checkpoint on rank 0 (the bare
        model, in eval mode, without gradients); shown in the progress line and summary.
        Random draws made here do not disturb training: spotray restores the RNG after."""
        return {}

    def preview(self, model: torch.nn.Module) -> str | None:
        """A short text showing what the final model does (a text sample), printed at the end."""
        return None

    def tokens_per_sample(self) -> int | None:
        """Tokens in one sample, for a tokens/s figure; None shows samples/s."""
        return None

    def shard_units(self, model: torch.nn.Module) -> list[torch.nn.Module] | None:
        """Under `scaling.strategy: fsdp`, the submodules FSDP2 shards one by one: each
        unit's parameters are gathered only while it runs, so the largest unit bounds the
        extra memory. None: the children of the model's largest ModuleList (a transformer's
        blocks)."""
        return None


@dataclass(frozen=True)
class ModelFacts:
    """What the smoke check learned of the model, for the checks before Ray starts."""

    parameters: int
    shapes: dict[str, list[int]]  # state_dict key -> shape
    loss: float


def _name(entrypoint: str) -> str:
    return f"workload {entrypoint}"


def entrypoint_module(entrypoint: str) -> str:
    """The module of a `module:attribute` entrypoint."""
    return entrypoint.partition(":")[0]


def resolve_class(entrypoint: str, search_dir: str | None = None) -> type[Workload]:
    """Import `module:attribute` and check it is a Workload subclass.

    `search_dir` (default: the current directory) goes first on the path, as `python -m`
    puts it there: a workload in the folder `spotray train` runs from imports as is.
    """
    module_name, attr = entrypoint_module(entrypoint), entrypoint.partition(":")[2]
    folder = os.path.abspath(search_dir or os.getcwd())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise WorkloadError(f"{_name(entrypoint)}: cannot import {module_name}: {err}") from None
    except Exception as err:  # the user's module failed while importing: still one line
        raise WorkloadError(
            f"{_name(entrypoint)}: importing {module_name} failed: {type(err).__name__}: {err}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise WorkloadError(f"{_name(entrypoint)}: module {module_name} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise WorkloadError(f"{_name(entrypoint)}: {attr} is not a subclass of spotray.Workload")
    missing = [
        m for m in ("build_model", "num_samples", "sample", "loss") if getattr(cls, m) is getattr(Workload, m)
    ]
    if missing:
        raise WorkloadError(f"{_name(entrypoint)}: {attr} does not define {', '.join(missing)}")
    return cls


def check_args(cls: type[Workload], entrypoint: str, args: dict[str, Any]) -> None:
    """Whether the constructor takes `args`, without running it."""
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as err:
        raise WorkloadError(
            f"{_name(entrypoint)}: workload.args do not fit {cls.__name__}(): {err}"
        ) from None


def load(entrypoint: str, args: dict[str, Any], search_dir: str | None = None) -> Workload:
    """Import and construct the workload; every failure is one `WorkloadError` line."""
    cls = resolve_class(entrypoint, search_dir)
    check_args(cls, entrypoint, args)
    try:
        return cls(**args)
    except Exception as err:
        raise WorkloadError(f"{_name(entrypoint)}: {cls.__name__}(**args) failed: {_short(err)}") from None


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def units_to_shard(workload: Workload, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The units FSDP shards before the root: the workload's `shard_units`, or the children
    of the ModuleList holding the most parameters; empty when there are none."""
    import torch

    units = workload.shard_units(model)
    if units is not None:
        return list(units)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        return []
    largest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return [unit for unit in largest if any(True for _ in unit.parameters())]


def smoke_check(workload: Workload, entrypoint: str, seed: int, strategy: str = "ddp") -> ModelFacts:
    """Build the model and compute one loss on two samples, on the CPU, before Ray starts.

    Catches what would otherwise fail on every worker after Ray started: a data set that
    cannot be read, samples that do not collate, a loss that is not a finite scalar.
    """
    import torch

    name = _name(entrypoint)

    def call(what: str, fn: Any, *a: Any) -> Any:
        try:
            return fn(*a)
        except Exception as err:
            raise WorkloadError(f"{name}: {what} failed: {_short(err)}") from None

    n = call("num_samples()", workload.num_samples)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise WorkloadError(f"{name}: num_samples() must be a positive int, got {n!r}")
    samples = [call(f"sample({i})", workload.sample, i) for i in sorted({0, n - 1})[:2]]
    batch = call("collate() of two samples", workload.collate, samples)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = call("build_model()", workload.build_model)
    if not isinstance(model, torch.nn.Module):
        raise WorkloadError(
            f"{name}: build_model() must return a torch.nn.Module, got {type(model).__name__}"
        )
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        loss = call("loss(model, batch)", workload.loss, model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise WorkloadError(f"{name}: loss() must return a scalar tensor (the mean), got {shape}")
    value = float(loss)
    if not math.isfinite(value):
        raise WorkloadError(f"{name}: loss() of two samples is {value} before any training")
    if strategy == "fsdp" and not call("shard_units(model)", units_to_shard, workload, model):
        raise WorkloadError(
            f"{name}: scaling.strategy fsdp, but {type(model).__name__} has no ModuleList of layers to "
            "shard and the workload names no shard_units(model): define shard_units, or use ddp"
        )
    return ModelFacts(
        parameters=sum(p.numel() for p in model.parameters()),
        shapes=model_shapes(model),
        loss=value,
    )


def model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Every state_dict entry's shape: what a checkpoint must match to be loaded."""
    return {k: list(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}
