"""`spotray train --address`: submitted as a Ray Job to a running cluster, logs streamed back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from spotray.driver.trainer import PRELOAD_HOOK
from spotray.ray_compat.workers import setup_hook_env
from spotray.runtime import checkpoint as ckpt
from tests.conftest import REPO, TEST_CONFIG, free_port, run_spotray, spotray_env, write_config
from tests.integration.faults import wait_for

pytestmark = pytest.mark.integration
HEAD_MEMORY = 1_000_000_000


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head started with `ray start --block`, stopped by signalling that process only.
    Its memory resource is 1 GB, as on a small node: enough for the runs here."""
    temp = tmp_path_factory.mktemp("ray")
    dashboard = free_port()
    # SIGTERM makes `ray start --block` drain its node for up to 30 s first (for Ray Serve's
    # proxies): nothing here needs it.
    env = spotray_env(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    # The job's `python` is the cluster's: this virtualenv's, as in the node image.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp}",
            "--num-cpus=2",
            f"--memory={HEAD_MEMORY}",
            "--disable-usage-stats",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        import urllib.request

        def dashboard_up() -> bool:
            try:
                urllib.request.urlopen(url, timeout=2)
                return True
            except OSError:
                return False

        wait_for(dashboard_up, 120, "the Ray dashboard", interval=1)
        yield url
    finally:
        children = psutil.Process(head.pid).children(recursive=True)
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=60)
        for proc in alive:
            proc.kill()
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def test_train_as_a_ray_job_streams_logs_and_checkpoints(ray_head: str, tmp_path: Path) -> None:
    """A workload of the user's own, in the folder the job is submitted from: its module
    travels with the job (the cluster has never seen it)."""
    shutil.copy(REPO / "examples" / "spirals" / "spirals.py", tmp_path / "my_spirals.py")
    workload = {"entrypoint": "my_spirals:SpiralsMLP", "args": {"size": 2000, "hidden": 16}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TEST_CONFIG, "workload": workload}))
    result = run_spotray(["train", str(config), "--address", ray_head, "--steps", "40"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted Ray Job spotray-t-" in result.stdout
    # Streamed from the job's driver on the cluster:
    assert "started from scratch on 2 worker(s)" in result.stdout
    assert "done: t at step 40" in result.stdout
    assert "val_accuracy" in result.stdout  # the workload's evaluate, in the summary
    assert "Uploading package" not in result.stdout + result.stderr  # Ray's client INFO lines stay quiet
    run = tmp_path / "runs" / "t"  # the relative storage path was pinned to this machine's view
    assert (run / ckpt.dir_name(40) / ckpt.META_FILE).is_file()
    # The warm spares the driver kept on the cluster end with the job.
    wait_for(lambda: not preloading_processes(), 60, "the job's warm spares to end")


def preloading_processes() -> list[int]:
    """Processes whose environment names spotray's preload hook: training workers and spares."""
    ((key, hook),) = setup_hook_env(PRELOAD_HOOK).items()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key) == hook:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_a_model_no_node_can_hold_fails_before_a_worker_starts(ray_head: str, tmp_path: Path) -> None:
    """52M parameters: ~1.2 GB per worker with AdamW, and the only node has 1 GB."""
    shutil.copy(REPO / "examples" / "spirals" / "spirals.py", tmp_path / "my_spirals.py")
    workload = {"entrypoint": "my_spirals:SpiralsMLP", "args": {"size": 2000, "hidden": 5120}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({**TEST_CONFIG, "workload": workload}))
    result = run_spotray(["train", str(config), "--address", ray_head], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    need = "a worker needs about 1.2 GB of memory, and the cluster's nodes that can host one have"
    assert f"{need} at most 1.0 GB" in said
    assert "started from scratch" not in said  # refused before Ray Train started a worker
    assert not (tmp_path / "runs").exists()


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_spotray(["train", str(config), "--address", f"127.0.0.1:{free_port()}"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: cannot reach the Ray dashboard")
    assert len(result.stderr.strip().splitlines()) == 1
