"""Real faults for integration tests: kill Ray Train workers, tear a checkpoint upload."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from spotray.runtime import checkpoint as ckpt


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def train_workers(root_pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes started under `root_pid` (our own `spotray train`)."""
    workers = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if "ray::RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.NoSuchProcess:
            continue
    return workers


def kill_one_worker(root_pid: int) -> int:
    """SIGKILL one Ray Train worker of our run; returns its pid."""
    workers = train_workers(root_pid)
    assert workers, "no Ray Train worker to kill"
    victim = workers[-1]
    victim.send_signal(signal.SIGKILL)
    return victim.pid


def complete_checkpoint(run_dir: Path, step: int) -> Callable[[], bool]:
    from spotray.runtime.storage import Location

    folder = run_dir / ckpt.dir_name(step)

    def check() -> bool:
        if not folder.is_dir():
            return False
        import pyarrow.fs as pafs

        return ckpt.inspect(Location(pafs.LocalFileSystem(), str(folder), str(folder)), step).complete

    return check


# The padding that makes a staged checkpoint big, named as one more rank's DCP shard: a torn
# checkpoint of spotray's holds only the format's files, whichever of them arrived before the
# kill (its manifest may not have), and those are what clean-up removes.
PADDING = "__7_0.distcp"


def stage_newer_checkpoint(source: Path, staging: Path, step: int, padding_bytes: int) -> Path:
    """A complete checkpoint folder for `step`, copied from `source`, made big by a padding file.

    It is what a rank stages before Ray uploads it; the padding makes the upload take long
    enough to be killed in the middle.
    """
    folder = staging / ckpt.dir_name(step)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    meta["step"] = step
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))
    torch.save(torch.zeros(padding_bytes // 4, dtype=torch.float32), folder / PADDING)
    manifest = json.loads((folder / ckpt.manifest_file(0)).read_text())
    for name in (ckpt.META_FILE, PADDING):
        manifest[name] = ckpt.FileEntry.of(folder / name).to_json()
    (folder / ckpt.manifest_file(0)).write_text(json.dumps(manifest))
    return folder


UPLOAD = """
import sys
import pyarrow.fs as pafs
from ray.train.v2._internal.execution.storage import _pyarrow_fs_copy_files
# What Ray Train's StorageContext.persist_current_checkpoint does with a staged folder.
fs = pafs.LocalFileSystem()
fs.create_dir(sys.argv[2])
_pyarrow_fs_copy_files(sys.argv[1], sys.argv[2], source_filesystem=fs, destination_filesystem=fs)
"""


def kill_during_upload(source: Path, dest: Path) -> None:
    """Upload `source` to `dest` like Ray does, and SIGKILL the uploader half way."""
    proc = subprocess.Popen([sys.executable, "-c", UPLOAD, str(source), str(dest)])
    big = dest / PADDING
    full = (source / PADDING).stat().st_size
    try:
        wait_for(lambda: big.exists() and 0 < big.stat().st_size < full, 60, "the upload to start", 0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def train_killing_a_worker(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    when: Callable[[], bool],
    what: str,
    interval: float = 0.2,
) -> str:
    """Run `spotray train ARGS`, SIGKILL one of its Ray Train workers once `when()` holds
    (asked every `interval` seconds), and return what it printed; the run must still succeed."""
    from tests.conftest import SPOTRAY

    out = cwd / "out.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen([*SPOTRAY, "train", *args], cwd=cwd, env=env, stdout=sink, stderr=sink)
        try:
            wait_for(when, 240, what, interval)
            kill_one_worker(proc.pid)
            assert proc.wait(timeout=300) == 0, out.read_text()
        finally:
            proc.kill()
    return out.read_text()
