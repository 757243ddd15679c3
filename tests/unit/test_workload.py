"""The workload API: a workload that cannot run is one line naming it, before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from spotray import Workload
from spotray.errors import WorkloadError
from spotray.workload import load, model_shapes, smoke_check
from tests.conftest import TEST_CONFIG, run_spotray


class Linear(Workload):
    """A workload that works; the broken ones below change one method each."""

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(3, 1)

    def num_samples(self) -> int:
        return 10

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3,), float(index)), torch.tensor([float(index)])

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)


class VectorLoss(Linear):
    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (model(x) - y) ** 2


class NanLoss(Linear):
    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.tensor(float("nan"))


class Ragged(Linear):
    def sample(self, index: int) -> torch.Tensor:
        return torch.zeros(index + 1)


class NoModel(Linear):
    def build_model(self) -> torch.nn.Module:
        return "a model"  # type: ignore[return-value]


class Empty(Linear):
    def num_samples(self) -> int:
        return 0


class Unreadable(Linear):
    def sample(self, index: int) -> torch.Tensor:
        raise FileNotFoundError("s3://bucket/data.bin")


def test_a_working_workload_passes_and_describes_its_model() -> None:
    facts = smoke_check(Linear(), "m:Linear", seed=0)
    assert facts.parameters == 4
    assert facts.shapes == {"weight": [1, 3], "bias": [1]} == model_shapes(torch.nn.Linear(3, 1))
    assert facts.loss > 0


@pytest.mark.parametrize(
    "cls,words",
    [
        (VectorLoss, ["m:VectorLoss", "scalar", "(2, 1)"]),
        (NanLoss, ["m:NanLoss", "nan", "before any training"]),
        (Ragged, ["m:Ragged", "collate() of two samples failed", "RuntimeError"]),
        (NoModel, ["m:NoModel", "torch.nn.Module", "str"]),
        (Empty, ["m:Empty", "num_samples() must be a positive int", "0"]),
        (Unreadable, ["m:Unreadable", "sample(0) failed", "FileNotFoundError", "s3://bucket/data.bin"]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_a_broken_workload_is_one_line_naming_it(cls: type[Workload], words: list[str]) -> None:
    with pytest.raises(WorkloadError) as err:
        smoke_check(cls(), f"m:{cls.__name__}", seed=0)
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_the_required_methods_are_named(tmp_path: Path) -> None:
    (tmp_path / "half.py").write_text(
        "from spotray import Workload\nclass Half(Workload):\n    def num_samples(self):\n        return 1\n"
    )
    with pytest.raises(WorkloadError, match="Half does not define build_model, sample, loss"):
        load("half:Half", {}, str(tmp_path))


def test_a_constructor_that_fails_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text(
        "from spotray import Workload\n"
        "from tests.unit.test_workload import Linear\n"
        "class Boom(Linear):\n"
        "    def __init__(self, width=1):\n"
        "        raise ValueError('width must be even\\nsecond line')\n"
    )
    with pytest.raises(WorkloadError) as err:
        load("boom:Boom", {"width": 3}, str(tmp_path))
    assert str(err.value) == "workload boom:Boom: Boom(**args) failed: ValueError: width must be even"


def test_a_workload_with_a_bad_loss_in_its_own_folder_is_exit_2_before_ray(tmp_path: Path) -> None:
    """`spotray train` from the workload's folder: it imports from there, checks it, says why."""
    (tmp_path / "mine.py").write_text(
        "import torch\nfrom tests.unit.test_workload import VectorLoss\nclass Mine(VectorLoss):\n    pass\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**TEST_CONFIG, "workload": {"entrypoint": "mine:Mine"}}))
    result = run_spotray(["train", str(path)], cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: workload mine:Mine: loss() must return a scalar tensor (the mean), got (2, 1)"
    ]
    assert not (tmp_path / "runs").exists()


class Stacked(Linear):
    def build_model(self) -> torch.nn.Module:
        model = torch.nn.Module()
        model.blocks = torch.nn.ModuleList(torch.nn.Linear(3, 3) for _ in range(2))
        model.small = torch.nn.ModuleList([torch.nn.Linear(3, 1)])
        model.forward = lambda x: model.small[0](model.blocks[1](model.blocks[0](x)))
        return model


class Units(Linear):
    def shard_units(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [model]


def test_fsdp_shards_the_largest_module_list_or_the_workloads_units() -> None:
    from spotray.workload import units_to_shard

    torch.manual_seed(0)
    model = Stacked().build_model()
    assert units_to_shard(Stacked(), model) == list(model.blocks)
    assert smoke_check(Stacked(), "m:Stacked", seed=0, strategy="fsdp").parameters == 28
    linear = Units().build_model()
    assert units_to_shard(Units(), linear) == [linear]


def test_fsdp_with_nothing_to_shard_is_one_line() -> None:
    """A model with no ModuleList and no shard_units: FSDP would gather the whole model at
    once in every forward, so the peak holds it whole; say so before Ray starts."""
    smoke_check(Linear(), "m:Linear", seed=0, strategy="ddp")
    with pytest.raises(WorkloadError) as err:
        smoke_check(Linear(), "m:Linear", seed=0, strategy="fsdp")
    assert str(err.value) == (
        "workload m:Linear: scaling.strategy fsdp, but Linear has no ModuleList of layers to shard and "
        "the workload names no shard_units(model): define shard_units, or use ddp"
    )
