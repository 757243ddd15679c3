"""A checkpoint's model and optimizer tensors, through torch.distributed.checkpoint (DCP).

One format for every strategy: `get_state_dict` names tensors by the bare model's parameter
names (no `module.` from DDP; FSDP2 keeps the names), every rank writes its own shard
(`__<rank>_0.distcp`, replicated DDP tensors once between them) and rank 0 the index
(`.metadata`). DCP reshards on load, so a checkpoint written by 3 workers loads on 2, and
one written under DDP loads under FSDP and back.

DCP keeps only tensors here. Everything else in the state (the optimizer's param groups,
the schedule, counters) goes to rank 0's `trainer.pt`, loaded with `weights_only=True`: DCP
would store it as pickled bytes and unpickle those without restriction, and whoever can
write the bucket must not be able to run code at the next resume. For the same reason the
`.metadata` index (a pickle) is read by an unpickler that builds DCP's metadata types only.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

METADATA_FILE = ".metadata"
TRAINER_FILE = "trainer.pt"  # rank 0: the non-tensor rest of the state, weights_only
# Called before DCP reads a file: (name, the (offset, length) ranges to be read, or None for
# all of it). spotray.runtime.checkpoint.CheckedFiles.get: fetch that part and check it.
Fetch = Callable[[str, "list[tuple[int, int]] | None"], Any]
_SEP = "/"  # joins a tensor's path in the nested state; parameter names hold dots, not slashes


def shard_file(rank: int) -> str:
    return f"__{rank}_0.distcp"


# ---------------------------------------------------------------------------------------
# Tensors apart from the rest
# ---------------------------------------------------------------------------------------


def split(tree: Any, path: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """(every tensor of `tree` by its path, `tree` with those tensors replaced by None)."""
    if isinstance(tree, torch.Tensor):
        return {path: tree}, None
    if isinstance(tree, dict):
        parts = {k: split(v, _join(path, k)) for k, v in tree.items()}
        return _union(t for t, _ in parts.values()), {k: rest for k, (_, rest) in parts.items()}
    if isinstance(tree, (list, tuple)):
        items = [split(v, _join(path, i)) for i, v in enumerate(tree)]
        return _union(t for t, _ in items), type(tree)(rest for _, rest in items)
    return {}, tree


def merge(tensors: dict[str, torch.Tensor], rest: Any, path: str = "") -> Any:
    """The inverse of `split`: `rest` with each tensor put back at its path."""
    if path in tensors:
        return tensors[path]
    if isinstance(rest, dict):
        return {k: merge(tensors, v, _join(path, k)) for k, v in rest.items()}
    if isinstance(rest, (list, tuple)):
        return type(rest)(merge(tensors, v, _join(path, i)) for i, v in enumerate(rest))
    return rest


def changed_by_the_update(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    """Which of `split`'s tensors only the optimizer step changes (parameters, optimizer
    state), not a forward pass (buffers): those may be copied while the next step runs."""
    parameters = {path("model", n) for n, _ in model.named_parameters(remove_duplicate=False)}
    return {k for k in tensors if k in parameters or k.startswith(path("optimizer", ""))}


def path(*keys: str) -> str:
    """A tensor's path as `split` names it: path("model", "h.0.weight") -> "model/h.0.weight"."""
    return _SEP.join(keys)


def _join(path: str, key: Any) -> str:
    return f"{path}{_SEP}{key}" if path else str(key)


def _union(parts: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        out.update(part)
    return out


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state by parameter name: full tensors under DDP, this rank's
    shards (DTensors) under FSDP."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


# ---------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------


def save(tensors: dict[str, torch.Tensor], folder: Path, group: Any) -> None:
    """Write this rank's shard (and, on rank 0, the index) into `folder`: a collective over
    `group` (a gloo group of its own, so it can run off the training thread)."""
    writer = dcp.FileSystemWriter(folder, sync_files=False)
    with _plain_errors(folder):
        dcp.save(tensors, storage_writer=writer, process_group=group, no_dist=group is None)


def load(tensors: dict[str, torch.Tensor], folder: Path, group: Any, fetch: Fetch | None = None) -> None:
    """Fill `tensors` in place from the checkpoint in `folder`, resharding as needed.

    `fetch`, when given, is called before DCP reads a file of `folder`, with the byte
    ranges this rank's part of the load reads there, and for no other file. An error it
    raises is raised as is on every rank."""
    with _plain_errors(folder):
        dcp.load(
            tensors,
            storage_reader=_SafeReader(folder, fetch),
            planner=_TensorsOnlyPlanner(),
            process_group=group,
            no_dist=group is None,
        )


@contextlib.contextmanager
def _plain_errors(folder: Path) -> Iterator[None]:
    """DCP's CheckpointException derives from BaseException, past every `except Exception`:
    one line instead, naming the first rank's cause. Without a group DCP warns that it
    assumes a single process: that is the intent, so the warning is dropped."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            yield
    except _FetchFailed as err:
        raise err.error from None
    except CheckpointException as err:
        fetching = [cause.error for cause, _ in err.failures.values() if isinstance(cause, _FetchFailed)]
        if fetching:
            raise fetching[0] from None
        rank, (cause, _) = next(iter(err.failures.items()))
        raise CheckpointDataError(f"{folder}: rank {rank}: {type(cause).__name__}: {cause}") from None


class CheckpointDataError(RuntimeError):
    """A checkpoint's tensors could not be written or read."""


def restore_training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    folder: Path,
    rest: Any,
    group: Any,
    fetch: Fetch | None = None,
) -> None:
    """Load model and optimizer from the checkpoint in `folder` (`fetch` as for `load`);
    `rest` is what `split` left of the saved training state (from trainer.pt)."""
    tensors, _ = split(training_state(model, optimizer))
    load(tensors, folder, group, fetch)
    state = merge(tensors, rest)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_model(model: torch.nn.Module, folder: Path, fetch: Fetch | None = None) -> None:
    """The model's weights alone, in this process, without a process group (the driver)."""
    tensors, _ = split({"model": model.state_dict()})
    load(tensors, folder, None, fetch)
    model.load_state_dict({k.split(_SEP, 1)[1]: v for k, v in tensors.items()})


def read_state(folder: Path) -> dict[str, Any]:
    """The whole saved state, without the model, in this process: model and optimizer
    (`optimizer.state` by parameter name), scheduler, workload, progress. For inspecting
    and comparing checkpoints."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    index = _SafeReader(folder).read_metadata().state_dict_metadata
    tensors = {
        name: torch.empty(entry.size, dtype=entry.properties.dtype)
        for name, entry in index.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    load(tensors, folder, None)
    trainer = torch.load(folder / TRAINER_FILE, map_location="cpu", weights_only=True)
    return {**merge(tensors, trainer.pop("rest")), **trainer}


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: this rank's shard of a DTensor, or the tensor itself."""
    return value.to_local() if isinstance(value, DTensor) else value


class _TensorsOnlyPlanner(DefaultLoadPlanner):
    """Refuses pickled values: spotray's DCP checkpoints hold tensors only."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        raise ValueError(f"{read_item.dest_index.fqn}: the checkpoint holds pickled data, not a tensor")


class _FetchFailed(BaseException):
    """Carries `fetch`'s error through DCP to every rank: a BaseException, as DCP takes an
    Exception from `read_metadata` for a missing index and tries another."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)  # the args pickle: DCP sends each rank's error to all
        self.error = error


def _fetched(fetch: Fetch, name: str, ranges: list[tuple[int, int]] | None = None) -> None:
    try:
        fetch(name, ranges)
    except Exception as err:
        raise _FetchFailed(err) from err


class _SafeReader(dcp.FileSystemReader):
    """Reads `.metadata` with an unpickler that builds DCP's metadata types and nothing else,
    and hands each file a read needs to `fetch` first."""

    def __init__(self, path: Path, fetch: Fetch | None = None) -> None:
        super().__init__(path)
        self._fetch = fetch

    def read_data(self, plan: Any, planner: Any) -> Any:
        if self._fetch is not None:
            ranges: dict[str, list[tuple[int, int]]] = {}
            for item in plan.items:
                stored = self.storage_data[item.storage_index]
                ranges.setdefault(stored.relative_path, []).append((stored.offset, stored.length))
            for name, parts in ranges.items():
                _fetched(self._fetch, name, parts)
        return super().read_data(plan, planner)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self._fetch is not None:
            _fetched(self._fetch, METADATA_FILE)
        path = Path(self.path) / METADATA_FILE
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        if metadata.planner_data is None:
            metadata.planner_data = {}
        return metadata


# What a DCP index is made of (found by walking the pickles DCP writes); anything else is refused.
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a layout from its name
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),  # where it was written (StorageMeta.checkpoint_id)
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _ALLOWED or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's index")
