"""`spotray train` end to end on a real local Ray: learning, checkpoints, exact resume, faults.

Every run here is the real command in a subprocess, starting its own Ray. The reference is
an uninterrupted 2-worker run; interrupted runs must end with bit-identical parameters.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from spotray.runtime import checkpoint as ckpt
from spotray.runtime import tensors
from tests.conftest import SPOTRAY, run_spotray, spotray_env, write_config
from tests.integration.conftest import BATCH, STEPS, assert_bit_identical, copy_checkpoint, final_state
from tests.integration.faults import (
    PADDING,
    complete_checkpoint,
    kill_during_upload,
    stage_newer_checkpoint,
    train_killing_a_worker,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_two_workers_learn_and_leave_readable_checkpoints(reference) -> None:
    workdir, result = reference
    assert f"done: t at step {STEPS}" in result.stdout
    assert "preview (the model continues 'The ')" in result.stdout
    run = workdir / "runs" / "t"
    steps = sorted(int(p.name.split("_")[1]) for p in run.glob("checkpoint_0*"))
    assert steps == list(range(20, STEPS + 1, 20))
    metas = [json.loads((run / ckpt.dir_name(s) / ckpt.META_FILE).read_text()) for s in steps]
    for step, meta in zip(steps, metas, strict=True):
        assert meta["step"] == step
        assert meta["samples"] == step * BATCH
        assert meta["world_size"] == 2
        assert meta["write_seconds"] > 0 and meta["stall_seconds"] >= 0
        shapes = meta["model"]["shapes"]
        assert shapes["tok_emb.weight"] == [256, 128] and "blocks.1.ln1.weight" in shapes
        assert "blocks.2.ln1.weight" not in shapes  # n_layer 2
    assert [m["wall_time_s"] for m in metas] == sorted(m["wall_time_s"] for m in metas)
    losses = [m["loss"] for m in metas]
    assert losses[0] < math.log(256)  # better than uniform over bytes already at step 20
    # And it keeps learning. A checkpoint's loss is one step's (16 x 64 bytes: +-0.2 of noise);
    # the last three average 0.4 below the first here.
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses


def test_rerun_of_a_finished_run_trains_nothing(reference) -> None:
    workdir, _ = reference
    result = run_spotray(["train", str(workdir / "config.yaml")], cwd=workdir)
    assert result.returncode == 0
    assert f"already at step {STEPS}" in result.stdout


def test_checkpoint_of_another_model_shape_is_a_clear_error(reference) -> None:
    workdir, _ = reference
    config = write_config(workdir, {"workload": {"args": {"n_layer": 3}}}, name="wider.yaml")
    result = run_spotray(["train", str(config), "--steps", str(STEPS + 20)], cwd=workdir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "holds another model (lacks blocks.2." in result.stderr and "--fresh" in result.stderr


def test_killed_worker_resumes_from_newest_checkpoint_bit_identical(reference, tmp_path: Path) -> None:
    """SIGKILL a worker right after checkpoint 60 lands in storage, before Ray registers it.

    Ray Train's controller registers one report per worker per health-check poll; a 5 s poll
    makes the window in which a whole checkpoint is in storage but unknown to Ray wide and
    certain (checkpoints 20, 40, 60 land within ~4 s). Ray alone would restore an older one.
    """
    config = write_config(tmp_path)
    env = spotray_env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="5")
    checkpoint_60 = complete_checkpoint(tmp_path / "runs" / "t", 60)
    text = train_killing_a_worker([str(config)], tmp_path, env, checkpoint_60, "checkpoint 60")
    assert "restart 1: from step 60 (complete in storage, not yet registered by Ray)" in text, text
    assert "restarts     1" in text
    assert_bit_identical(final_state(tmp_path), final_state(reference[0]))
    # Adopted in place: Ray's own record of the run now lists checkpoint 60.
    snapshot = (tmp_path / "runs" / "t" / "checkpoint_manager_snapshot.json").read_text()
    assert ckpt.dir_name(60) in snapshot


def test_ctrl_c_then_faults_in_storage_and_the_run_still_ends_bit_identical(
    reference, tmp_path: Path
) -> None:
    """A real SIGINT to `spotray train` after its checkpoint 60: exit 130 and one line that
    says where the next run resumes (step N). Before that run, a newer checkpoint is torn half
    way through its upload, a byte of checkpoint N is flipped and the newest checkpoint before
    N that Ray registered is deleted by hand: the torn folder is removed, N is skipped with a
    line that says why, the deleted one is named, and the run goes on from the newest
    checkpoint left to pass the uninterrupted one's last step bit for bit. Ray's list of
    checkpoints stays usable: N and the deleted one, written again, are listed once each."""
    config = write_config(tmp_path)
    run = tmp_path / "runs" / "t"
    proc = subprocess.Popen(
        [*SPOTRAY, "train", str(config)],
        cwd=tmp_path,
        env=spotray_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(complete_checkpoint(run, 60), 240, "checkpoint 60")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    resumes = re.fullmatch(
        r"interrupted: t stopped at step \d+; run the same command again to resume from step (\d+)",
        err.strip(),
    )
    assert resumes and int(resumes.group(1)) >= 60, err
    n = int(resumes.group(1))

    torn = n + 40
    staged = stage_newer_checkpoint(run / ckpt.dir_name(n), tmp_path / "staging", torn, 400_000_000)
    kill_during_upload(staged, run / ckpt.dir_name(torn))
    assert not complete_checkpoint(run, torn)()
    flip_a_byte(run / ckpt.dir_name(n) / tensors.shard_file(1))
    gone = max(s for s in listed_steps(run) if s < n)
    shutil.rmtree(run / ckpt.dir_name(gone))
    left = max(s for s in range(20, n, 20) if s != gone and complete_checkpoint(run, s)())

    # On past the schedule's end (--steps): a run can always be taken further.
    second = run_spotray(["train", str(config), "--steps", str(STEPS + 20)], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    said = second.stdout.replace("\n", "")  # the console wraps long lines, folding long paths
    assert f"done: t at step {STEPS + 20}" in said
    assert f"skipped checkpoint {run / ckpt.dir_name(n)}: __1_0.distcp does not match its checksum" in said
    assert f"checkpoint {run / ckpt.dir_name(gone)} is gone: resuming from the one before" in said
    assert f"started from step {left}" in said
    assert f"resumed from step {left}" in " ".join(said.split())  # the summary says it too
    assert not (run / ckpt.dir_name(torn) / PADDING).exists()  # the torn folder is gone
    assert_bit_identical(final_state(tmp_path), final_state(reference[0]))
    assert listed_steps(run) == list(range(20, STEPS + 21, 20))


def listed_steps(run: Path) -> list[int]:
    """The steps of the checkpoints in Ray Train's own record of the run, in its order."""
    snapshot = json.loads((run / ckpt.RAY_SNAPSHOT).read_text())
    return [int(r["checkpoint_dir_name"].split("_")[1]) for r in snapshot["checkpoint_results"]]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_one_worker_follows_the_two_worker_trajectory(reference, tmp_path: Path) -> None:
    """Same global batch on 1 worker, cut into the same micro-batches (two of 8): bit for
    bit the two-worker run, optimizer state included. One worker adds the two halves'
    gradients scaled by 1/2, two workers average them: the same floats (halving is exact)."""
    config = write_config(tmp_path, {"scaling": {"min_workers": 1, "max_workers": 1}})
    result = run_spotray(["train", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(final_state(tmp_path), final_state(reference[0]))
    meta = json.loads((tmp_path / "runs" / "t" / ckpt.dir_name(STEPS) / ckpt.META_FILE).read_text())
    assert meta["world_size"] == 1


def test_a_non_finite_loss_stops_the_run_and_keeps_the_finite_checkpoints(tmp_path: Path) -> None:
    """lr 30: the gradient norm goes non-finite within a few steps (measured: step 6). The run
    ends with one line naming the step; every step before it is checkpointed (interval 1) and
    stays, none holds a non-finite loss, and nothing is retried."""
    update = {"optimizer": {"lr": 30.0, "min_lr": 1.0, "warmup_steps": 20}, "checkpoint": {"interval": 1}}
    config = write_config(tmp_path, update)

    result = run_spotray(["train", str(config)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    stopped = re.fullmatch(
        r"error: t stopped: (loss|gradient norm) \S+ at step (\d+), before the update; "
        r"the newest checkpoint is step (\d+)\. Lower optimizer\.lr or check the data, "
        r"then run again to resume",
        result.stderr.strip(),
    )
    assert stopped, result.stderr
    step, newest = int(stopped.group(2)), int(stopped.group(3))
    assert newest == step - 1 >= 1
    metas = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "t").glob("checkpoint_*/spotray.json")]
    assert metas and max(m["step"] for m in metas) == newest
    assert all(math.isfinite(m["loss"]) for m in metas)
    assert "restart" not in result.stdout  # stopped once, not retried max_failures times


def test_compiled_steps_stop_and_resume_bit_identical(tmp_path: Path) -> None:
    """`runtime.compile: true`: a run resumed from step 20 (a new process, a new compile)
    ends bit for bit as an uninterrupted compiled run, and each start's compile time is
    reported apart from the pace. (The run that stopped at 20 is the uninterrupted run's
    checkpoint 20 in a run of its own: one compiled run less to wait for.)"""
    update = {
        "runtime": {"compile": True},
        "optimizer": {"steps": 40},
        "scaling": {"min_workers": 1, "max_workers": 1},
        "checkpoint": {"interval": 10},
    }
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    for folder in (whole, halves):
        folder.mkdir()
    done = run_spotray(["train", str(write_config(whole, update))], cwd=whole)
    assert done.returncode == 0, done.stderr[-3000:]
    copy_checkpoint(whole / "runs" / "t", halves / "runs" / "t", 20)
    second = run_spotray(["train", str(write_config(halves, update))], cwd=halves)
    assert second.returncode == 0, second.stderr[-3000:]
    said = " ".join(second.stdout.split())
    assert "started from step 20" in said and "compiled: the first step at 21 took" in said
    assert re.search(r"compile \d+\.\d s of warm-up \(first steps\)", said), said
    assert_bit_identical(final_state(halves, 40), final_state(whole, 40))
