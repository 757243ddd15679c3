"""`spotray up --local` / `down --local`: cluster.local.yaml's fake nodes on this machine.

Ray's launcher cannot bring up the `fake_multinode` provider in the 2.60 wheel (`ray up`
stops on a missing example.yaml), but its real autoscaler runs it when the head is started
with `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`. That is what `up_local`
does, on free ports and in a Ray temp folder of its own, after filling in the provider's
`gcs_address`. Each fake node is a real raylet that the autoscaler starts and stops.

`down_local` cannot use `ray stop`: it kills every Ray process on the machine by name,
other people's clusters and test clusters included. `up_local` records the daemons that
`ray start` left running (their PID and start time: a PID reused later is not theirs);
they and everything they started since (fake raylets, workers, job drivers) are this
cluster's, and only they are stopped: SIGTERM, then SIGKILL after a grace. A `tail -f` on
the cluster's logs, or a process elsewhere that happens to use the same port, is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from spotray.cost.prices import spotray_home
from spotray.errors import ConfigError, SpotrayError
from spotray.ray_compat.node import loopback_env

DASHBOARD_PORT = 8265  # Ray's default, used when free
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class LocalCluster:
    name: str
    gcs_address: str
    dashboard_url: str
    metrics_url: str  # the head's Prometheus endpoint
    temp_dir: str
    config: str  # the autoscaling config the head runs, gcs_address filled in
    started: float
    daemons: list[tuple[int, float]]  # (pid, create_time) of what `ray start` left running


def state_dir(name: str) -> Path:
    return spotray_home() / "local" / name


def is_up(name: str) -> bool:
    return (state_dir(name) / "state.json").exists()


def load_state(name: str | None = None) -> LocalCluster:
    """The running local cluster `name`, or the only one there is."""
    root = spotray_home() / "local"
    found = sorted(p.parent.name for p in root.glob("*/state.json")) if root.exists() else []
    if name is None:
        if not found:
            raise ConfigError("no local cluster is up: start one with `spotray up --local`")
        if len(found) > 1:
            raise ConfigError(f"several local clusters are up ({', '.join(found)}): say which one")
        name = found[0]
    path = state_dir(name) / "state.json"
    if not path.exists():
        raise ConfigError(f"no local cluster {name!r} is up (known: {', '.join(found) or 'none'})")
    return LocalCluster(**json.loads(path.read_text()))


def _free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SpotrayError("no free TCP port on 127.0.0.1")


def _head_flags(config: dict[str, Any]) -> list[str]:
    """`ray start` flags for the head's resources and labels, from its node type."""
    head = config["available_node_types"][config["head_node_type"]]
    resources = dict(head.get("resources", {}))
    flags = [f"--num-cpus={int(resources.pop('CPU', 0))}", f"--num-gpus={int(resources.pop('GPU', 0))}"]
    if resources:
        flags.append(f"--resources={json.dumps(resources)}")
    if head.get("labels"):
        flags.append("--labels=" + ",".join(f"{k}={v}" for k, v in head["labels"].items()))
    return flags


def up_local(config_path: Path, autoscaler_v2: bool = False) -> LocalCluster:
    """Start the head with the real autoscaler over cluster.local.yaml's fake node types.

    `autoscaler_v2`: run Ray's autoscaler v2, the one `ray up` starts on AWS in Ray 2.60,
    instead of the v1 monitor that `ray start --autoscaling-config` runs. They differ where
    spot matters: v2 replaces a draining node at once, v1 only once it is gone
    (scripts/bench_replacement.py). v2 reads the provider's defaults file, which the wheel
    lacks for fake_multinode, so the same provider class is named as an external module.
    """
    config = yaml.safe_load(config_path.read_text())
    if config.get("provider", {}).get("type") != "fake_multinode":
        raise ConfigError(f"{config_path}: --local needs provider type fake_multinode (cluster.local.yaml)")
    extra_env = {}
    if autoscaler_v2:
        from spotray.ray_compat.autoscaler import FAKE_PROVIDER_MODULE, fake_head_node_id

        head_id = fake_head_node_id()
        config["provider"].update(
            type="external",
            module=FAKE_PROVIDER_MODULE,
            launch_multiple=True,
            head_node_id=head_id,
        )
        extra_env = {  # what Ray's own AutoscalingCluster(autoscaler_v2=True) sets
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": head_id,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": head_id,
        }
    name = config["cluster_name"]
    if is_up(name):
        raise ConfigError(f"local cluster {name!r} is already up; `spotray down --local` first")
    # Every port Ray would otherwise take at a fixed number, so that another Ray on this
    # machine (a test cluster, a `ray.init()`) does not keep the head's agents from starting.
    gcs_port, metrics_port, agent_port, client_port = (_free_port() for _ in range(4))
    dashboard_port = _free_port(DASHBOARD_PORT)
    gcs_address = f"127.0.0.1:{gcs_port}"
    config["provider"]["gcs_address"] = gcs_address
    folder = state_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    filled = folder / "autoscaling.yaml"
    filled.write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "spot_ceilings.json").unlink(missing_ok=True)  # from an earlier cluster of this name
    # Short: Ray's Unix socket paths under it must stay within 107 characters (a name of
    # 28 characters plus a suffix made the dashboard's sockets too long). Keyed by the
    # SPOTRAY_HOME and the name, so two homes with a cluster of one name never share it.
    key = hashlib.sha256(f"{spotray_home().resolve()}/{name}".encode()).hexdigest()[:10]
    temp_dir = Path(tempfile.gettempdir()) / f"spotray-{os.getuid()}" / key
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray) if ray.exists() else "ray",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--autoscaling-config={filled}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={metrics_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",
        "--disable-usage-stats",
        *_head_flags(config),
    ]
    # Job entrypoints (`python -m spotray.driver.job`) run in the head's environment: this one's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # All of it on 127.0.0.1: the cluster is this machine's alone.
    env = {**os.environ, **loopback_env(), "PATH": path, "RAY_FAKE_CLUSTER": "1", "SPOTRAY_CLUSTER": name}
    env.update(extra_env)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        down_processes([(p.pid, p.create_time()) for p in find_daemons(str(temp_dir), gcs_address)])
        raise SpotrayError(f"ray start failed: {lines[-1] if lines else done.returncode}")
    cluster = LocalCluster(
        name=name,
        gcs_address=gcs_address,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        temp_dir=str(temp_dir),
        config=str(filled),
        started=time.time(),
        daemons=[(p.pid, p.create_time()) for p in find_daemons(str(temp_dir), gcs_address)],
    )
    (folder / "state.json").write_text(json.dumps(asdict(cluster), indent=2))
    return cluster


def set_spot_capacity(cluster: LocalCluster, nodes: int) -> list[str]:
    """Let at most `nodes` fake nodes of each spot node type exist; returns those types.

    What a spot pool that AWS has run out of (0) or that has capacity again looks like to
    Ray's autoscaler: it re-reads its config file at every update, asks for no node of a
    type beyond its `max_workers`, and terminates the ones above it (as AWS would, here
    without a notice). Each type's own `max_workers` in the cluster file stays the ceiling.
    """
    if nodes < 0:
        raise ConfigError(f"spot capacity must be 0 or more nodes, got {nodes}")
    path = Path(cluster.config)
    config = yaml.safe_load(path.read_text())
    ceilings_file = path.with_name("spot_ceilings.json")
    types = config["available_node_types"]
    spot = {name: t for name, t in types.items() if t.get("labels", {}).get("market") == "spot"}
    if not ceilings_file.exists():  # the cluster file's own limits, kept for later changes
        ceilings_file.write_text(json.dumps({name: t.get("max_workers", 0) for name, t in spot.items()}))
    ceilings = json.loads(ceilings_file.read_text())
    for name, node_type in spot.items():
        node_type["max_workers"] = min(nodes, ceilings.get(name, 0))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)  # the autoscaler never reads half a file
    return sorted(spot)


def find_daemons(temp_dir: str, gcs_address: str) -> list[Any]:
    """Ray processes of the cluster that `ray start` just started: the daemons name its temp
    folder as an argument, or (Ray's client server) its GCS address as `--address=`."""
    import psutil

    def names_it(part: str) -> bool:  # not a longer folder or port that starts the same
        if part.startswith(("--address=", "--gcs-address=", "--gcs_address=")):
            return part.split("=", 1)[1] == gcs_address
        return part == temp_dir or part.endswith("=" + temp_dir) or temp_dir + os.sep in part

    return [p for p in psutil.process_iter(["cmdline"]) if any(map(names_it, p.info["cmdline"] or []))]


def cluster_processes(daemons: list[tuple[int, float]]) -> list[Any]:
    """The recorded daemons still running (same PID and start time) and all they started."""
    import psutil

    roots = []
    for pid, created in daemons:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                roots.append(proc)
        except psutil.NoSuchProcess:
            continue
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def down_processes(daemons: list[tuple[int, float]]) -> int:
    """Stop the cluster's processes: SIGTERM, then SIGKILL what is left. Returns how many."""
    import psutil

    procs = cluster_processes(daemons)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)
    return len(procs)


def down_local(cluster: LocalCluster) -> int:
    """Stop every process of the local cluster and forget it. Returns how many were stopped."""
    stopped = down_processes(cluster.daemons)
    for leftover in ("state.json", "spot_ceilings.json"):
        (state_dir(cluster.name) / leftover).unlink(missing_ok=True)
    return stopped
