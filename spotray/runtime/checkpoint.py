"""The checkpoint format: written in the background, committed whole, found in storage.

A checkpoint is a folder `checkpoint_<step>` in the run's storage, written through
`ray.train.report(..., checkpoint_upload_mode=ASYNC)`, so Ray Train's storage layer (local
or S3 via pyarrow) moves it. Inside:

- `.metadata` (rank 0) and `__<rank>_0.distcp` (every rank): the model and optimizer
  tensors, a torch.distributed.checkpoint (DCP) checkpoint that loads at any world size and
  under either strategy (spotray.runtime.tensors).
- `trainer.pt` (rank 0): the rest of the state: optimizer param groups, LR scheduler,
  counters, the workload's own state.
- `rng-rank<r>.pt` (every rank): Python, NumPy, torch (and CUDA) RNG states.
- `manifest-rank<r>.json` (every rank): size and SHA-256 of each file that rank wrote.
- `spotray.json` (rank 0): step, samples, world size, loss, evaluation, times, the model's
  tensor shapes, config; readable without torch.

Files hold tensors and plain values only and load with `weights_only=True` (DCP's index
with an unpickler limited to its own types): a checkpoint is data, and whoever can write
the bucket must not be able to run code at the next resume.

A checkpoint counts only when `spotray.json` and every rank's manifest are present, each
manifest gives every file a size and a checksum, and every file listed has its listed size:
a node killed in the middle of a write or upload leaves a folder that `scan` reports as torn
and `latest` never returns. Each rank checks the files it loads against their checksums as
it reads them (`CheckedFiles`): a flipped byte skips that checkpoint for the one before it.

Why storage, not only `ray.train.get_checkpoint()`: Ray registers a checkpoint when its
controller polls the workers' reports (every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`: 2 s by
default, 1 s as spotray sets it) and drops every report still queued when a worker dies. A
checkpoint uploaded in full less than one poll before a kill is therefore in storage but
unknown to Ray, which restores an older one. The training loop resumes from the newest
complete checkpoint of either kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from spotray.runtime.storage import Location

logger = logging.getLogger(__name__)

# 2: any workload, weights_only; 3: tensors through DCP (any world size, DDP or FSDP), checksums
FORMAT_VERSION = 3
META_FILE = "spotray.json"
DIR_PATTERN = re.compile(r"^checkpoint_(\d{9})$")  # dir_name's; checkpoint_5 is not spotray's
# What spotray and DCP write into a checkpoint folder: the only files spotray deletes there.
OWN_FILE = re.compile(
    r"^(spotray\.json|trainer\.pt|\.metadata(\.tmp)?|__\d+_\d+\.distcp|rng-rank\d+\.pt|manifest-rank\d+\.json)$"
)
MANIFEST_PATTERN = re.compile(r"^manifest-rank\d+\.json$")
# A DCP shard's unit of checksum, and of fetching when a rank reads only part of it: small,
# as a rank reads a few bytes of other ranks' shards (the optimizer's replicated step counts,
# which DCP saves once, spread over the ranks), a block each.
BLOCK = 1 << 20
# What Ray Train writes into the run folder itself; removed with the run by --fresh, as a
# snapshot naming checkpoints that are gone stops Ray's checkpoint manager at the next start.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray-private: the checkpoints it lists
RAY_RUN_FILES = (RAY_SNAPSHOT, ".validate_storage_marker")
# Fault injection (`spotray chaos --slow-storage-s`): every write takes this much longer, its
# manifest held back meanwhile, as on a slow disk. Lets a test land a notice mid-write.
SLOW_WRITE_ENV = "SPOTRAY_FAULT_SLOW_WRITE_S"
# Fault injection (`spotray chaos --slow-upload-s`): every upload of a checkpoint to the run's
# storage takes this much longer, as to a slow bucket.
SLOW_UPLOAD_ENV = "SPOTRAY_FAULT_SLOW_UPLOAD_S"
# Fault injection (`spotray chaos --slow-step-s`): every step takes at least this long on the
# job's full size (max_workers/world times it on fewer), as with a bigger model, so that
# capacity changes land while a short test run still trains.
SLOW_STEP_ENV = "SPOTRAY_FAULT_SLOW_STEP_S"


def dir_name(step: int) -> str:
    return f"checkpoint_{step:09d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def manifest_file(rank: int) -> str:
    return f"manifest-rank{rank}.json"


# ---------------------------------------------------------------------------------------
# Capturing state
# ---------------------------------------------------------------------------------------


class SnapshotBuffers:
    """CPU memory for state snapshots, kept from one checkpoint to the next.

    Copying into memory already touched is a memcpy; allocating 1 GB anew each time costs
    page faults that took as long as the copy itself (see BENCHMARKS.md). Pinned on CUDA
    machines so the device-to-host copy runs at full speed. A buffer is reused only after
    the write that read it has finished (the writer holds one checkpoint at a time).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def copy(self, tree: Any, key: str = "") -> Any:
        """A copy of `tree` whose tensors live in this object's CPU buffers (a DTensor's
        copy: this rank's shard, still placed in the same mesh)."""
        from torch.distributed.tensor import DTensor

        if isinstance(tree, DTensor):
            local = self.copy(tree.to_local(), key)
            return DTensor.from_local(
                local,
                tree.device_mesh,
                tree.placements,
                shape=tree.shape,
                stride=tree.stride(),
                run_check=False,
            )
        if isinstance(tree, torch.Tensor):
            buf = self._buffers.get(key)
            if buf is None or buf.shape != tree.shape or buf.dtype != tree.dtype:
                buf = torch.empty(
                    tree.shape, dtype=tree.dtype, device="cpu", pin_memory=torch.cuda.is_available()
                )
                self._buffers[key] = buf
            buf.copy_(tree.detach(), non_blocking=True)
            return buf
        if isinstance(tree, dict):
            return {k: self.copy(v, f"{key}/{k}") for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(self.copy(v, f"{key}/{i}") for i, v in enumerate(tree))
        return tree


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


@dataclass
class PendingCheckpoint:
    """A checkpoint whose files are being written to local staging by a background thread."""

    step: int
    folder: Path
    stall_s: float
    metrics: dict[str, Any]
    thread: threading.Thread
    evaluation: dict[str, float] = field(default_factory=dict)
    write_s: float = 0.0
    error: BaseException | None = None
    snapshotted: threading.Event = field(default_factory=threading.Event)  # `live` copied

    def done(self) -> bool:
        return not self.thread.is_alive()


@dataclass
class CheckpointWriter:
    """Writes one rank's part of a checkpoint to local staging, off the training thread.

    `group` is the process group of DCP's collectives (a gloo group of its own, as they run
    on this thread while training goes on); None on a single worker."""

    staging: Path
    rank: int
    group: Any = None
    pending: PendingCheckpoint | None = field(default=None, init=False)
    buffers: SnapshotBuffers = field(default_factory=SnapshotBuffers, init=False)

    def __post_init__(self) -> None:
        # A previous worker of this rank on this node may have died mid-write.
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        step: int,
        shards: dict[str, torch.Tensor] | None,
        files: dict[str, Any],
        meta: dict[str, Any] | None,
        stall_s: float,
        metrics: dict[str, Any],
        evaluation: dict[str, float] | None = None,
        live: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Begin writing checkpoint `step`: `shards` and `live` through DCP (a collective:
        every rank passes its part, or every rank None), `files` ({name: object to
        torch.save}).

        `shards` are snapshots already. `live` are the training state's own tensors, which
        only the next optimizer step changes (parameters, optimizer state): this thread
        copies them while the next forward and backward run, and the training thread calls
        `wait_snapshot` before that step. `meta` (rank 0 only) becomes `spotray.json`, with
        the write time filled in.
        """
        assert self.pending is None, "one checkpoint at a time"
        folder = self.staging / dir_name(step)
        pending = PendingCheckpoint(
            step, folder, stall_s, metrics, thread=threading.Thread(), evaluation=dict(evaluation or {})
        )

        def write() -> None:
            t0 = time.perf_counter()
            try:
                try:
                    copied = self._snapshot(live or {})
                finally:
                    pending.snapshotted.set()
                folder.mkdir(parents=True, exist_ok=True)
                if shards is not None:
                    from spotray.runtime import tensors  # torch.distributed.checkpoint: workers only

                    tensors.save({**shards, **copied}, folder, self.group)
                for name, obj in files.items():
                    torch.save(obj, folder / name)
                time.sleep(float(os.environ.get(SLOW_WRITE_ENV) or 0))
                pending.write_s = time.perf_counter() - t0
                if meta is not None:
                    body = dict(
                        meta, write_seconds=round(pending.write_s, 4), stall_seconds=round(stall_s, 4)
                    )
                    (folder / META_FILE).write_text(json.dumps(body, indent=2))
                listing = {p.name: FileEntry.of(p).to_json() for p in folder.iterdir()}
                # The manifest is written last: its presence says this rank's files are whole.
                (folder / manifest_file(self.rank)).write_text(json.dumps(listing))
            except BaseException as err:  # handed to the training thread in wait()
                pending.error = err

        pending.thread = threading.Thread(target=write, name=f"spotray-ckpt-{step}", daemon=True)
        pending.thread.start()
        self.pending = pending

    def _snapshot(self, live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy `live` into the CPU buffers, on a CUDA stream of its own where there is one
        (after the work already queued: the optimizer step that made these values)."""
        if not live or not torch.cuda.is_available():
            return self.buffers.copy(live, "live")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.default_stream())
        with torch.cuda.stream(stream):
            copied = self.buffers.copy(live, "live")
        stream.synchronize()
        return copied

    def wait_snapshot(self) -> float:
        """Before the optimizer step: block until the pending checkpoint's `live` tensors are
        copied; returns the seconds waited."""
        if self.pending is None or self.pending.snapshotted.is_set():
            return 0.0
        t0 = time.perf_counter()
        self.pending.snapshotted.wait()
        return time.perf_counter() - t0

    def wait(self) -> PendingCheckpoint:
        """Block until the pending write is finished and hand it over."""
        pending = self.pending
        assert pending is not None
        pending.thread.join()
        self.pending = None
        if pending.error is not None:
            raise pending.error
        return pending


def _sha256(stream: Any, copy: Path | None = None) -> str:
    """SHA-256 of a binary stream (a pyarrow input stream), read in 4 MB; written to
    `copy` on the way when given."""
    digest = hashlib.sha256()
    with open(copy, "wb") if copy is not None else contextlib.nullcontext() as out:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Finding and reading
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """A file as its rank's manifest lists it: what `CheckedFiles` checks it against."""

    size: int
    sha256: str
    block: int | None = None  # a DCP shard: the size of the blocks `blocks` has the SHA-256s of
    blocks: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        """A written file's entry; for a DCP shard with each BLOCK's SHA-256."""
        whole = hashlib.sha256()
        blocks = []
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK):
                whole.update(chunk)
                blocks.append(hashlib.sha256(chunk).hexdigest())
        if path.suffix != ".distcp":
            return cls(path.stat().st_size, whole.hexdigest())
        return cls(path.stat().st_size, whole.hexdigest(), BLOCK, tuple(blocks))

    @classmethod
    def parse(cls, raw: Any) -> FileEntry:
        """An entry read from a manifest; ValueError when a field is missing or wrong."""
        if not isinstance(raw, dict):
            raise ValueError(f"an entry is {type(raw).__name__}, not an object")
        size, sha256, block, blocks = (raw.get(k) for k in ("size", "sha256", "block", "blocks"))
        if not isinstance(size, int) or size < 0 or not isinstance(sha256, str):
            raise ValueError(f"an entry lacks a size or a sha256: {sorted(raw)}")
        if block is None and blocks is None:  # (manifests written before blocks, and non-shards)
            return cls(size, sha256)
        if not isinstance(block, int) or block <= 0 or not isinstance(blocks, list):
            raise ValueError("an entry's block or blocks is not what it should be")
        if len(blocks) != -(-size // block) or not all(isinstance(b, str) for b in blocks):
            raise ValueError(f"an entry of {size} bytes lists {len(blocks)} blocks of {block}")
        return cls(size, sha256, block, tuple(blocks))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"size": self.size, "sha256": self.sha256}
        if self.block is not None:
            body.update(block=self.block, blocks=list(self.blocks))
        return body


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint folder in the run's storage, and whether it is whole."""

    location: Location
    step: int
    meta: dict[str, Any] | None  # spotray.json, when it could be read
    problem: str | None  # why it does not count; None for a complete checkpoint
    unreadable: bool = False  # a read failed (an S3 hiccup, say): maybe whole, never deleted
    # Every rank's manifest merged, read once here (complete checkpoints only)
    files: Mapping[str, FileEntry] = field(default_factory=dict, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.problem is None


def _read_json(fs: pafs.FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def inspect(location: Location, step: int) -> StoredCheckpoint:
    """Check one checkpoint folder against its manifests."""
    fs = location.fs
    listing = fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    sizes = {os.path.basename(i.path): i.size for i in listing if i.type == pafs.FileType.File}
    if META_FILE not in sizes:
        return StoredCheckpoint(location, step, None, f"no {META_FILE}")
    reading = META_FILE
    try:
        meta = _read_json(fs, f"{location.path}/{META_FILE}")
        version = meta.get("format")
        if isinstance(version, int) and version < FORMAT_VERSION:  # refused, with the reason, on load
            return StoredCheckpoint(location, step, meta, None)
        files: dict[str, FileEntry] = {}
        for rank in range(int(meta["world_size"])):
            reading = manifest_file(rank)
            if reading not in sizes:
                return StoredCheckpoint(location, step, meta, f"no {reading}")
            for name, entry in _read_manifest(fs, f"{location.path}/{reading}").items():
                if sizes.get(name) != entry.size:
                    got = sizes.get(name, "missing")
                    return StoredCheckpoint(
                        location, step, meta, f"{name}: {got} bytes, expected {entry.size}"
                    )
                files[name] = entry
    except OSError as err:
        return StoredCheckpoint(location, step, None, f"{reading} unreadable: {err}", unreadable=True)
    except (ValueError, KeyError, TypeError) as err:
        return StoredCheckpoint(location, step, None, f"{reading} unreadable: {err}")
    return StoredCheckpoint(location, step, meta, None, files=files)


def _read_manifest(fs: pafs.FileSystem, path: str) -> dict[str, FileEntry]:
    body = _read_json(fs, path)
    if not isinstance(body, dict):
        raise ValueError(f"a manifest is {type(body).__name__}, not an object")
    return {name: FileEntry.parse(raw) for name, raw in body.items()}


def scan(run: Location) -> list[StoredCheckpoint]:
    """Every `checkpoint_<step>` folder of the run, oldest first."""
    try:
        entries = run.fs.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        name = os.path.basename(entry.path)
        match = DIR_PATTERN.match(name)
        if entry.type == pafs.FileType.Directory and match:
            found.append(inspect(run.join(name), int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(run: Location) -> StoredCheckpoint | None:
    """The newest complete checkpoint of the run, or None."""
    complete = [c for c in scan(run) if c.complete]
    return complete[-1] if complete else None


class FileCheckError(Exception):
    """A checkpoint file that must not be loaded: it does not match its manifest's checksum,
    or storage would not give it. Its checkpoint is skipped for the one before it."""


class CheckedFiles:
    """A checkpoint's files as a local folder for DCP's reader, each part checked against
    its manifest's SHA-256 the first time it is asked for: on local storage read in place,
    otherwise fetched into `cache` (or, without one, only hashed) in the same read.

    A rank asks only for what it loads, and for a DCP shard only the byte ranges its part of
    the load reads, each fetched and checked in blocks of `BLOCK` (the manifest lists every
    block's SHA-256); the rest of the local copy stays a hole nobody reads. Restoring from
    S3 under FSDP then reads about a rank's own shard, not the whole checkpoint once per rank
    plus once more to check it beforehand.
    """

    def __init__(self, checkpoint: StoredCheckpoint, cache: Path | None = None) -> None:
        self.location = checkpoint.location
        local = isinstance(self.location.fs, pafs.LocalFileSystem)
        self._cache = None if local else cache
        self.folder = Path(self.location.path) if local or cache is None else cache
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache.mkdir(parents=True)
        self._files = checkpoint.files
        self._checked: dict[str, set[int] | None] = {}  # name -> blocks checked; None: all of it
        self.fetched_bytes = 0  # read from storage

    def get(self, name: str, ranges: list[tuple[int, int]] | None = None) -> Path:
        """The local path of file `name`, with the part to be read checked: all of it, or
        the blocks that cover `ranges` ((offset, length) pairs). Raises FileCheckError."""
        listed = self._files.get(name)
        if listed is None:
            raise FileCheckError(f"{name} is not in the checkpoint's manifests")
        done = self._checked.setdefault(name, set())
        if done is None:
            return self.folder / name
        try:
            if ranges is None or listed.block is None:  # (manifests written before blocks)
                self._check_whole(name, listed)
                self._checked[name] = None
            else:
                size = listed.block
                wanted = {b for offset, length in ranges for b in _blocks(offset, length, size)}
                self._check_blocks(name, listed, sorted(wanted - done))
                done |= wanted
        except OSError as err:
            raise FileCheckError(f"{name} unreadable: {err}") from err
        return self.folder / name

    def names(self) -> list[str]:
        """Every file the manifests list."""
        return list(self._files)

    def drop(self) -> None:
        """Delete the fetched copies (once loaded, they are in memory)."""
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)

    def _check_whole(self, name: str, listed: FileEntry) -> None:
        copy = None if self._cache is None else self._cache / name
        with self.location.fs.open_input_stream(f"{self.location.path}/{name}") as source:
            digest = _sha256(source, copy)
        self.fetched_bytes += listed.size
        if digest != listed.sha256:
            raise FileCheckError(f"{name} does not match its checksum")

    def _check_blocks(self, name: str, listed: FileEntry, blocks: list[int]) -> None:
        """Read `blocks` (sorted), runs of adjacent ones in one request each; check each."""
        copy = None
        if self._cache is not None:
            copy = self._cache / name
            if not copy.exists():
                with open(copy, "wb") as f:
                    f.truncate(listed.size)  # sparse: only fetched blocks take disk
        size = listed.block
        assert size is not None  # get() reads a file without blocks whole
        with self.location.fs.open_input_file(f"{self.location.path}/{name}") as source:
            for first, last in _runs(blocks):
                start = first * size
                data = source.read_at(min((last + 1) * size, listed.size) - start, start)
                self.fetched_bytes += len(data)
                for b in range(first, last + 1):
                    part = data[(b - first) * size : (b - first + 1) * size]
                    if hashlib.sha256(part).hexdigest() != listed.blocks[b]:
                        raise FileCheckError(f"{name} does not match its checksum")
                if copy is not None:
                    with open(copy, "r+b") as f:
                        f.seek(start)
                        f.write(data)


def _blocks(offset: int, length: int, size: int) -> range:
    """The numbers of the `size`-byte blocks that bytes [offset, offset + length) lie in."""
    return range(offset // size, (offset + max(length, 1) - 1) // size + 1)


def _runs(blocks: list[int], most: int = 64) -> list[tuple[int, int]]:
    """Sorted block numbers as (first, last) runs of adjacent ones, `most` blocks at most
    (one request each, held in memory while it is checked)."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][1] == b - 1 and b - runs[-1][0] < most:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


def verify(checkpoint: StoredCheckpoint) -> str | None:
    """Read every file of a complete checkpoint against its manifest's SHA-256: why it must
    not be loaded (a flipped byte, a file rewritten in place), or None."""
    files = CheckedFiles(checkpoint)
    try:
        for name in files.names():
            files.get(name)
    except FileCheckError as err:
        return str(err)
    return None


def delete(location: Location) -> list[str]:
    """Delete the files spotray and DCP write in a checkpoint folder, and the folder once it
    is empty; returns the names of what else was there, kept."""
    try:
        listing = location.fs.get_file_info(pafs.FileSelector(location.path))
    except FileNotFoundError:
        return []
    listed = set()
    for info in listing:  # what spotray's manifests say it wrote, whatever the names
        if MANIFEST_PATTERN.match(os.path.basename(info.path)):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                listed |= set(_read_json(location.fs, info.path))
    kept = []
    for info in listing:
        name = os.path.basename(info.path)
        if info.type == pafs.FileType.File and (OWN_FILE.match(name) or name in listed):
            location.fs.delete_file(info.path)
        else:
            kept.append(name)
    if not kept:
        location.fs.delete_dir(location.path)
    return kept


def reconcile_with_ray(run: Location) -> list[str]:
    """Make the run folder loadable by Ray Train's checkpoint manager again; returns what was
    done, one line each.

    Ray refuses to start a run whose snapshot (RAY_SNAPSHOT, a Ray-private JSON file)
    names a checkpoint folder that is gone ("delete the existing folder"), and fails on a
    snapshot it cannot parse. A folder removed by hand is put back empty: Ray is satisfied,
    spotray sees it as torn and resumes from the one before, and the next checkpoint of that
    step is written into it. An unreadable snapshot is moved aside: Ray starts without it
    and spotray registers the newest complete checkpoint again.
    """
    path = f"{run.path}/{RAY_SNAPSHOT}"
    try:
        with run.fs.open_input_stream(path) as f:
            snapshot = json.loads(f.read())
        names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as err:
        aside = f"{path}.unreadable-{int(time.time())}"
        run.fs.move(path, aside)
        return [f"Ray's checkpoint list {run.uri}/{RAY_SNAPSHOT} was unreadable ({err}): moved aside"]
    done = []
    for name in dict.fromkeys(names):
        folder = run.join(name)
        if not folder.exists():
            run.fs.create_dir(folder.path)
            done.append(f"checkpoint {folder.uri} is gone: resuming from the one before")
    return done


def delete_run(run: Location) -> list[str]:
    """`--fresh`: every checkpoint spotray wrote and Ray Train's files for the run, and the
    run folder once empty; returns the paths (relative to the run) of what else was kept."""
    kept = []
    for stored in scan(run):
        kept += [f"{os.path.basename(stored.location.path)}/{name}" for name in delete(stored.location)]
    for name in RAY_RUN_FILES:
        try:
            run.fs.delete_file(f"{run.path}/{name}")
        except FileNotFoundError:
            pass
    try:
        rest = run.fs.get_file_info(pafs.FileSelector(run.path))
    except FileNotFoundError:
        return kept
    others = [os.path.basename(i.path) for i in rest if not DIR_PATTERN.match(os.path.basename(i.path))]
    if not rest:
        run.fs.delete_dir(run.path)
    return kept + others
