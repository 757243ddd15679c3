"""The checkpoint format: whole or invisible, and the newest whole one is found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from spotray.runtime.storage import Location


def local(path: Path) -> Location:
    return Location(pafs.LocalFileSystem(), str(path), str(path))


def write(staging: Path, step: int, world: int = 2) -> Path:
    """Both ranks' parts of a small checkpoint, as the loop writes them."""
    for rank in range(world):
        writer = ckpt.CheckpointWriter(staging / f"rank{rank}", rank)
        files = {ckpt.rng_file(rank): ckpt.rng_state()}
        meta = None
        if rank == 0:
            files[tensors.TRAINER_FILE] = {"model": {"w": torch.full((4,), float(step))}}
            meta = {"format": ckpt.FORMAT_VERSION, "step": step, "world_size": world, "loss": 1.0}
        writer.start(step, None, files, meta, stall_s=0.01, metrics={"step": step})
        pending = writer.wait()
        for item in pending.folder.iterdir():  # the storage upload: ranks merge into one folder
            dest = staging / "run" / ckpt.dir_name(step)
            dest.mkdir(parents=True, exist_ok=True)
            item.rename(dest / item.name)
    return staging / "run" / ckpt.dir_name(step)


def test_complete_checkpoint_is_found_with_its_metadata(tmp_path: Path) -> None:
    write(tmp_path, 10)
    write(tmp_path, 20)
    found = ckpt.scan(local(tmp_path / "run"))
    assert [c.step for c in found] == [10, 20]
    newest = ckpt.latest(local(tmp_path / "run"))
    assert newest is not None and newest.step == 20
    assert newest.meta["loss"] == 1.0 and newest.meta["write_seconds"] >= 0
    assert newest.meta["stall_seconds"] == 0.01
    assert ckpt.verify(newest) is None
    state = torch.load(ckpt.CheckedFiles(newest).get(tensors.TRAINER_FILE), weights_only=True)
    assert state["model"]["w"].tolist() == [20.0] * 4


def edit_manifest(folder: Path, change) -> None:
    """Rewrite rank 1's manifest with `change` applied to it."""
    manifest = json.loads((folder / ckpt.manifest_file(1)).read_text())
    change(manifest)
    (folder / ckpt.manifest_file(1)).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda d: (d / ckpt.manifest_file(1)).unlink(), "no manifest-rank1.json"),
        (lambda d: (d / ckpt.META_FILE).unlink(), "no spotray.json"),
        (lambda d: (d / ckpt.rng_file(1)).unlink(), "rng-rank1.pt: missing"),
        (lambda d: os.truncate(d / tensors.TRAINER_FILE, 10), "trainer.pt: 10 bytes"),
        (lambda d: (d / ckpt.META_FILE).write_text("{"), "spotray.json"),
        (lambda d: edit_manifest(d, lambda m: m[ckpt.rng_file(1)].pop("sha256")), "manifest-rank1.json"),
        (lambda d: (d / ckpt.manifest_file(1)).write_text("[]"), "manifest-rank1.json"),
    ],
    ids=[
        "rank 1 never uploaded",
        "no metadata",
        "file missing",
        "file cut short",
        "metadata garbled",
        "an entry without its checksum",
        "a manifest that lists nothing",
    ],
)
def test_torn_checkpoint_is_never_the_latest(tmp_path: Path, damage, problem: str) -> None:
    write(tmp_path, 10)
    damage(write(tmp_path, 20))
    run = local(tmp_path / "run")
    torn = next(c for c in ckpt.scan(run) if c.step == 20)
    assert not torn.complete and problem in torn.problem
    assert ckpt.latest(run).step == 10


WRITER = """
import sys, torch
from pathlib import Path
from spotray.runtime import checkpoint as ckpt
writer = ckpt.CheckpointWriter(Path(sys.argv[1]), 0)
big = torch.zeros(150_000_000)  # 600 MB: long enough to be killed in the middle
writer.start(30, {"model/w": big}, {ckpt.rng_file(0): ckpt.rng_state()},
             {"format": ckpt.FORMAT_VERSION, "step": 30, "world_size": 1}, stall_s=0.0, metrics={})
writer.wait()
"""


def test_kill_during_write_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    """SIGKILL the writing process while its shard is half written: the folder never counts."""
    staging = tmp_path / "staging"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(staging)])
    state = staging / ckpt.dir_name(30) / tensors.shard_file(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (state.exists() and state.stat().st_size > 1_000_000):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the writer never started writing"
    found = ckpt.scan(local(staging))
    assert len(found) == 1 and not found[0].complete
    assert ckpt.latest(local(staging)) is None


def test_metadata_is_plain_json(tmp_path: Path) -> None:
    folder = write(tmp_path, 5, world=1)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    assert meta["step"] == 5 and meta["world_size"] == 1


def test_a_flipped_byte_fails_verification_and_the_one_before_is_used(tmp_path: Path) -> None:
    """Same size, other content: only the checksum can tell."""
    write(tmp_path, 10)
    folder = write(tmp_path, 20)
    data = bytearray((folder / tensors.TRAINER_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / tensors.TRAINER_FILE).write_bytes(bytes(data))
    run = local(tmp_path / "run")
    flipped = ckpt.latest(run)
    assert flipped.step == 20, "same sizes: the scan alone cannot see it"
    assert ckpt.verify(flipped) == "trainer.pt does not match its checksum"
    older = next(c for c in ckpt.scan(run) if c.step == 10)
    assert ckpt.verify(older) is None


def test_fresh_deletes_only_what_spotray_and_ray_wrote(tmp_path: Path) -> None:
    """A run named like a user's data folder: --fresh takes spotray's checkpoints and Ray's
    run files, and leaves the user's files where they were."""
    write(tmp_path, 10)
    folder = write(tmp_path, 20)
    run = tmp_path / "run"
    (run / "corpus.txt").write_text("the user's data")
    (run / "checkpoint_5").mkdir()
    (run / "checkpoint_5" / "mine.txt").write_text("not a checkpoint")
    (folder / "notes.txt").write_text("written by hand into a checkpoint")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")

    kept = ckpt.delete_run(local(run))

    assert sorted(kept) == ["checkpoint_000000020/notes.txt", "checkpoint_5", "corpus.txt"]
    assert (run / "corpus.txt").read_text() == "the user's data"
    assert (run / "checkpoint_5" / "mine.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not (run / ckpt.dir_name(10)).exists()
    assert not (run / "checkpoint_manager_snapshot.json").exists()
    assert ckpt.scan(local(run))[0].problem == "no spotray.json"


def test_fresh_on_a_run_of_spotray_alone_leaves_nothing(tmp_path: Path) -> None:
    write(tmp_path, 10)
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text("{}")
    assert ckpt.delete_run(local(tmp_path / "run")) == []
    assert not (tmp_path / "run").exists()


def test_live_tensors_are_saved_as_they_were_when_the_checkpoint_began(tmp_path: Path) -> None:
    """The writer copies parameters while the next step's forward runs; the training thread
    waits for that copy before the update, so the update never reaches the checkpoint."""
    weight = torch.arange(1_000_000, dtype=torch.float32)
    writer = ckpt.CheckpointWriter(tmp_path / "staging", 0)
    meta = {"format": ckpt.FORMAT_VERSION, "step": 1, "world_size": 1}
    writer.start(1, {}, {tensors.TRAINER_FILE: {"rest": {}}}, meta, 0.0, {}, live={"model/w": weight})
    writer.wait_snapshot()
    weight.add_(1.0)  # the optimizer step
    folder = writer.wait().folder
    saved = {"model/w": torch.zeros_like(weight)}
    tensors.load(saved, folder, None)
    assert torch.equal(saved["model/w"], torch.arange(1_000_000, dtype=torch.float32))
