"""`spotray up --local` runs Ray's real autoscaler over cluster.local.yaml's fake nodes: a job
that asks for more workers than exist makes it add nodes; with the spot pool dry
(`--spot-capacity 0`) the on-demand fallback runs it on the on-demand type, and moves it back
when spot capacity returns; `spotray status` and the head's Prometheus endpoint show the
nodes, the run and spotray's gauges while it trains, idle nodes go away after the idle
timeout, `spotray down --local` leaves no process behind, and the ledger bills each node in
its market."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from spotray.cluster.local import LocalCluster, cluster_processes, down_local, load_state
from tests.conftest import REPO, SPOTRAY, no_aws_env, run_spotray, spotray_env, write_config

pytestmark = pytest.mark.integration

IDLE_TIMEOUT_MIN = 0.2  # cluster.local.yaml says 0.5; 12 s keeps the test short
STEPS = 400  # enough to still be training after the fallback and the move back


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    every: float = 2.0,
    context: Callable[[], str] = lambda: "",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[tuple[Path, LocalCluster]]:
    config = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    config["cluster_name"] = f"spotray-test-{os.getpid()}"
    config["idle_timeout_minutes"] = IDLE_TIMEOUT_MIN
    path = tmp_path / "cluster.local.yaml"
    path.write_text(yaml.safe_dump(config))
    up = run_spotray(["up", "--local", str(path)], cwd=tmp_path, timeout=120)
    assert up.returncode == 0, up.stderr
    cluster = load_state(config["cluster_name"])
    assert cluster.dashboard_url in up.stdout
    try:
        yield path, cluster
    finally:
        down_local(cluster)  # whatever the test left, it stops only this cluster, and forgets it


def beyond_loopback(procs: list[psutil.Process]) -> list[str]:
    """What these processes listen on other than 127.0.0.1 (IPv4, or IPv4-mapped IPv6)."""
    found = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                loopback = conn.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1")
                if conn.status == psutil.CONN_LISTEN and not loopback:
                    found.append(f"{proc.name()} {conn.laddr.ip}:{conn.laddr.port}")
        except psutil.NoSuchProcess:
            continue
    return found


def controller_decisions(temp_dir: Path) -> str:
    """What Ray Train's controller decided (its system log, INFO and above), for a failure."""
    lines = []
    for log in sorted(temp_dir.glob("session_latest/logs/train/ray-train-sys-controller-*.log")):
        for line in log.read_text().splitlines():
            try:
                said = json.loads(line)
            except json.JSONDecodeError:  # a line still being written
                continue
            if said.get("levelname") != "DEBUG":
                lines.append(f"{said.get('asctime')} {str(said.get('message'))[:200]}")
    return "\n".join(lines)


def status(tmp_path: Path, path: Path) -> dict[str, Any]:
    done = run_spotray(["status", "--local", str(path), "--json"], cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def gauge(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"ray_{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_local_cluster_scales_falls_back_to_on_demand_and_goes_down_clean(
    tmp_path: Path, local_cluster: tuple[Path, LocalCluster]
) -> None:
    path, cluster = local_cluster
    # Closed by default: nothing `up` started listens beyond loopback (GCS, raylet, agents,
    # dashboard, client server, metrics).
    assert beyond_loopback(cluster_processes(cluster.daemons)) == []
    before = status(tmp_path, path)
    assert [n["instance_type"] for n in before["nodes"]] == ["m5.2xlarge"]  # the head alone
    assert not before["runs"]

    # The spot pool is dry: the autoscaler may add no spot node.
    dry = run_spotray(["up", "--local", str(path), "--spot-capacity", "0"], cwd=tmp_path)
    assert dry.returncode == 0 and "at most 0" in dry.stdout, dry.stderr

    # Two workers that each need a `spot_gpu_node`, which only fake spot nodes have; after
    # 5 s without them, the fallback runs them on the on-demand type.
    config = write_config(
        tmp_path,
        {
            "name": "local-t",
            "optimizer": {"steps": STEPS},
            "scaling": {"resources_per_worker": {"spot_gpu_node": 1}, "on_demand_after_s": 5},
            # Periodic checkpoints far apart: the move back to spot must ask for its own.
            "checkpoint": {"storage_path": str(tmp_path / "runs"), "interval": 200},
        },
    )
    log = tmp_path / "train.log"
    job = subprocess.Popen(
        [*SPOTRAY, "train", str(config), "--address", "local"],
        cwd=tmp_path,
        env=spotray_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )

    def seen() -> str:
        """What a person would look at when the job does not get there: status, the job's
        log and Ray Train's decisions."""
        now = run_spotray(["status", "--local", str(path)], cwd=tmp_path, timeout=60).stdout
        tail = "\n".join(log.read_text().splitlines()[-40:])
        decisions = controller_decisions(Path(cluster.temp_dir))
        return f"spotray status:\n{now}\nthe job's last lines:\n{tail}\nRay Train's controller:\n{decisions}"

    try:

        def training() -> dict[str, Any] | None:
            now = status(tmp_path, path)
            runs = [r for r in now["runs"] if r["run"] == "local-t" and r["state"] == "running"]
            return now if runs and runs[0]["step"] >= 1 and runs[0]["workers"] == 2 else None

        during = wait_for("the job to train on 2 on-demand workers", training, timeout=240, context=seen)
        workers = [n for n in during["nodes"] if n["node_type"] != "head"]
        assert [n["node_type"] for n in workers] == ["p3_8xlarge_on_demand"] * 2
        assert all(n["market"] == "on-demand" and n["usd_per_hour"] > 0 for n in workers)
        assert during["usd_per_hour"] == pytest.approx(
            sum(n["usd_per_hour"] for n in during["nodes"]), abs=1e-3
        )
        ours = cluster_processes(cluster.daemons)
        assert len(ours) > 10  # gcs, raylets, agents, workers, the job's driver...
        # The nodes the autoscaler added are as closed, and so are the workers but for one
        # socket: torch's TCPStore in rank 0 listens on every interface, with no setting.
        open_ = beyond_loopback(ours)
        assert len(open_) <= 1 and all(o.startswith("ray::RayTrainWorker") for o in open_), open_

        # Spot capacity is back: the job checkpoints and moves to spot nodes, while the
        # checks below read the cluster (the run must still be training when it moves).
        back = run_spotray(["up", "--local", str(path), "--spot-capacity", "2"], cwd=tmp_path)
        assert back.returncode == 0, back.stderr

        # The same as a person reads it.
        shown = run_spotray(["status"], cwd=tmp_path).stdout
        assert "local-t running" in shown and "p3.8xlarge" in shown

        # spotray's gauges on the head's Prometheus endpoint, over real HTTP.
        def exported() -> str | None:
            text = scrape(cluster.metrics_url)
            return text if gauge(text, "spotray_workers", run="local-t") == 2 else None

        # Ray exports every 10 s: wait for the gauge to say what status said.
        text = wait_for("spotray_workers = 2 on the metrics endpoint", exported, timeout=60)
        assert gauge(text, "spotray_cluster_usd_per_hour", cluster=cluster.name) > 0
        assert gauge(text, "spotray_goodput", run="local-t") is not None

        def moved_or_ended() -> dict[str, Any] | None:
            now = status(tmp_path, path)
            [run] = [r for r in now["runs"] if r["run"] == "local-t"]
            spot = [n for n in now["nodes"] if n["market"] == "spot"]
            return now if run["state"] != "running" or (run["restarts"] and len(spot) >= 2) else None

        moved = wait_for("the job to move back to spot", moved_or_ended, timeout=180, context=seen)
        [run] = moved["runs"]
        assert run["state"] == "running", f"the run ended on demand: STEPS is too few\n{seen()}"
        assert run["restarts"] == 1, seen()

        job.wait(timeout=300)
        out = log.read_text()
        assert job.returncode == 0, out
        assert re.search(rf"done.*local-t at step {STEPS}", out)
        # The checkpoint the move asked for was written once: the group on spot resumed from
        # it and went on to the periodic ones (`interval` steps apart) and the last.
        moved_at = int(re.search(r"restart 1: from step (\d+)", out).group(1))
        folders = (tmp_path / "runs" / "local-t").glob("checkpoint_[0-9]*")
        written = sorted(int(c.name.split("_")[1]) for c in folders)
        assert [c for c in written if c > moved_at] == [*range(moved_at + 200, STEPS, 200), STEPS], written
    finally:
        if job.poll() is None:
            job.kill()

    after = status(tmp_path, path)
    [run] = [r for r in after["runs"] if r["run"] == "local-t"]
    assert run["state"] == "finished" and run["last_checkpoint_step"] == STEPS
    # The move asked for a checkpoint first, so it cost the seconds until Ray Train acted on
    # it (the loop polls the request every 1 s, the controller collects reports every 2 s and
    # decides at its next poll: ~11 steps measured here), not up to an interval (200 steps).
    assert run["restarts"] == 1 and run["steps_lost"] <= 30

    # Idle, the fake nodes go after the idle timeout: the head is left.
    def head_alone() -> dict[str, Any] | None:
        now = status(tmp_path, path)
        return now if [n["node_type"] for n in now["nodes"]] == ["head"] else None

    idle = wait_for("idle fake nodes to be removed", head_alone, timeout=120, every=3)
    assert idle["ended_nodes"] == {"scaled in": 4}

    # A user reading the cluster's log is not the cluster: `down` leaves it alone.
    log = next(Path(cluster.temp_dir).glob("session_*/logs/monitor.out"))
    reader = subprocess.Popen(["tail", "-f", str(log)], stdout=subprocess.DEVNULL)
    try:
        down = run_spotray(["down", "--local", str(path)], cwd=tmp_path, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not [p for p in ours if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not cluster_processes(cluster.daemons)
        assert reader.poll() is None, "down stopped a tail -f of the cluster's log"
    finally:
        reader.kill()

    # The ledger kept what Ray's node table said: the head, the two on-demand p3.8xlarge
    # that ran the job while spot was dry (billed on demand), and the two spot nodes.
    bill = run_spotray(["cost", "--cluster", cluster.name, "--offline", "--json"], cwd=tmp_path)
    assert bill.returncode == 0, bill.stderr
    nodes = json.loads(bill.stdout)["nodes"]
    workers = sorted((n["market"], n["instance_type"]) for n in nodes if n["instance_type"] != "m5.2xlarge")
    assert workers[:2] == [("on-demand", "p3.8xlarge")] * 2
    assert [m for m, _ in workers[2:]] == ["spot", "spot"]
    on_demand = [n for n in nodes if n["market"] == "on-demand" and n["instance_type"] == "p3.8xlarge"]
    assert all(n["hours"] > 0 and n["cost_usd"] == pytest.approx(n["on_demand_usd"]) for n in on_demand)


def test_local_bad_input_is_one_line(tmp_path: Path) -> None:
    aws = run_spotray(["up", "--local", str(REPO / "cluster.yaml")], cwd=tmp_path, env=no_aws_env())
    assert aws.returncode == 2 and "fake_multinode" in aws.stderr and len(aws.stderr.splitlines()) == 1
    none = run_spotray(["status"], cwd=tmp_path, env=no_aws_env())
    assert none.returncode == 2 and "spotray up --local" in none.stderr
