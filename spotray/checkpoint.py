"""The checkpoint format: written in the background, committed whole, found in storage.

A checkpoint is a folder `checkpoint_<step>` in the run's storage, written through
`ray.train.report(..., checkpoint_upload_mode=ASYNC)`, so Ray Train's storage layer (local
or S3 via pyarrow) moves it. Inside:

- `state.pt` (rank 0): model, optimizer, LR scheduler, counters, the workload's own state.
- `rng-rank<r>.pt` (every rank): Python, NumPy, torch (and CUDA) RNG states.
- `manifest-rank<r>.json` (every rank): `{file: size}` for what that rank wrote.
- `spotray.json` (rank 0): step, samples, world size, loss, evaluation, times, the model's
  tensor shapes, config; readable without torch.

Files hold tensors and plain values only and load with `weights_only=True`: a checkpoint
is data, and whoever can write the bucket must not be able to run code at the next resume.

A checkpoint counts only when `spotray.json` and every rank's manifest are present and every
file listed has its listed size: a node killed in the middle of a write or upload leaves a
folder that `scan` reports as torn and `latest` never returns.

Why storage, not only `ray.train.get_checkpoint()`: Ray registers a checkpoint when its
controller polls the workers' reports (every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`: 2 s by
default, 1 s as spotray sets it) and drops every report still queued when a worker dies. A
checkpoint uploaded in full less than one poll before a kill is therefore in storage but
unknown to Ray, which restores an older one. The training loop resumes from the newest
complete checkpoint of either kind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from spotray.storage import Location

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: any workload; tensors and plain values only (loaded weights_only)
META_FILE = "spotray.json"
STATE_FILE = "state.pt"
DIR_PATTERN = re.compile(r"^checkpoint_(\d+)$")
# Fault injection (`spotray chaos --slow-storage-s`): every write takes this much longer, its
# manifest held back meanwhile, as on a slow disk. Lets a test land a notice mid-write.
SLOW_WRITE_ENV = "SPOTRAY_FAULT_SLOW_WRITE_S"
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
        """A copy of `tree` whose tensors live in this object's CPU buffers."""
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

    def done(self) -> bool:
        return not self.thread.is_alive()


@dataclass
class CheckpointWriter:
    """Writes one rank's part of a checkpoint to local staging, off the training thread."""

    staging: Path
    rank: int
    pending: PendingCheckpoint | None = field(default=None, init=False)
    buffers: SnapshotBuffers = field(default_factory=SnapshotBuffers, init=False)

    def __post_init__(self) -> None:
        # A previous worker of this rank on this node may have died mid-write.
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        step: int,
        files: dict[str, Any],
        meta: dict[str, Any] | None,
        stall_s: float,
        metrics: dict[str, Any],
        evaluation: dict[str, float] | None = None,
    ) -> None:
        """Begin writing `files` ({name: object to torch.save}) for checkpoint `step`.

        `meta` (rank 0 only) becomes `spotray.json`, with the write time filled in.
        """
        assert self.pending is None, "one checkpoint at a time"
        folder = self.staging / dir_name(step)
        pending = PendingCheckpoint(
            step, folder, stall_s, metrics, thread=threading.Thread(), evaluation=dict(evaluation or {})
        )

        def write() -> None:
            t0 = time.perf_counter()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for name, obj in files.items():
                    torch.save(obj, folder / name)
                time.sleep(float(os.environ.get(SLOW_WRITE_ENV) or 0))
                pending.write_s = time.perf_counter() - t0
                if meta is not None:
                    body = dict(
                        meta, write_seconds=round(pending.write_s, 4), stall_seconds=round(stall_s, 4)
                    )
                    (folder / META_FILE).write_text(json.dumps(body, indent=2))
                sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
                # The manifest is written last: its presence says this rank's files are whole.
                (folder / manifest_file(self.rank)).write_text(json.dumps(sizes))
            except BaseException as err:  # handed to the training thread in wait()
                pending.error = err

        pending.thread = threading.Thread(target=write, name=f"spotray-ckpt-{step}", daemon=True)
        pending.thread.start()
        self.pending = pending

    def wait(self) -> PendingCheckpoint:
        """Block until the pending write is finished and hand it over."""
        pending = self.pending
        assert pending is not None
        pending.thread.join()
        self.pending = None
        if pending.error is not None:
            raise pending.error
        return pending


# ---------------------------------------------------------------------------------------
# Finding and reading
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint folder in the run's storage, and whether it is whole."""

    location: Location
    step: int
    meta: dict[str, Any] | None  # spotray.json, when it could be read
    problem: str | None  # why it does not count; None for a complete checkpoint

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
        for rank in range(int(meta["world_size"])):
            reading = manifest_file(rank)
            if reading not in sizes:
                return StoredCheckpoint(location, step, meta, f"no {reading}")
            for name, size in _read_json(fs, f"{location.path}/{reading}").items():
                if sizes.get(name) != size:
                    got = sizes.get(name, "missing")
                    return StoredCheckpoint(location, step, meta, f"{name}: {got} bytes, expected {size}")
    except (ValueError, KeyError, TypeError, OSError) as err:
        return StoredCheckpoint(location, step, None, f"{reading} unreadable: {err}")
    return StoredCheckpoint(location, step, meta, None)


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


def load_file(checkpoint: Location, name: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load one file of a checkpoint, from any filesystem."""
    with checkpoint.fs.open_input_file(f"{checkpoint.path}/{name}") as f:
        buffer = io.BytesIO(f.read())
    return torch.load(buffer, map_location=map_location, weights_only=True)


def delete(location: Location) -> None:
    try:
        location.fs.delete_dir(location.path)
    except FileNotFoundError:
        pass
