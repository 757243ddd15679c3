"""Ray's core, where its public API has no answer: this machine's Ray on loopback, a GCS
client without a driver, the internal KV, drains, and what drivers print."""

from __future__ import annotations

import os
import socket
from typing import Any


def loopback_env() -> dict[str, str]:
    """The environment that keeps a one-machine Ray and its workers on loopback.

    Every Ray process binds where its node's address says, and Ray turns a loopback node
    address into the machine's network address unless it believes it runs without a cluster
    (as on Windows and macOS). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is that belief, read by
    `ray start` and every daemon it starts; GLOO_SOCKET_IFNAME keeps the workers'
    torch.distributed sockets on loopback too.
    """
    names = {name for _, name in socket.if_nameindex()}
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo0" if "lo0" in names else "lo"}


def keep_on_loopback() -> None:
    """Make every Ray process this process starts listen on 127.0.0.1 only.

    For a Ray that runs on this machine alone (in-process, chaos's fake nodes). Sets the
    environment the daemons inherit, and Ray's own copy of the flag, which
    `ray._private.ray_constants` read at import (public replacement: none; Ray binds its
    servers to the node address and has no listen-address setting).
    """
    os.environ.update(loopback_env())
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def hide_node_death_reports() -> None:
    """Keep Ray's reports of dead nodes off this driver's terminal; they stay in Ray's logs.

    When a raylet dies, its node's agent publishes the tail of the raylet's log to every
    driver, which prints it (~25 lines a node). `spotray chaos` kills nodes on purpose, so
    each report would read as a crash. Ray prints them from `ray._private.worker`'s
    `print_to_stdstream`, tagged `pid == "raylet"`; nothing public turns that off
    (`log_to_driver=False` covers the workers' output only).
    """
    from ray._private import worker

    shown = worker.print_to_stdstream

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            shown(data, ignore_prefix)

    worker.print_to_stdstream = print_to_stdstream


def gcs_client(address: str) -> Any:
    """A plain GCS client, no driver: `ray._raylet.GcsClient` (public replacement: none;
    `ray.util.state` goes through the dashboard, which the watcher must not depend on)."""
    from ray._raylet import GcsClient

    return GcsClient(address=address)


def kv_get(key: bytes, namespace: str) -> bytes | None:
    """Read Ray's internal KV from a process connected to Ray
    (`ray.experimental.internal_kv._internal_kv_get`; public replacement: none)."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key, namespace=namespace)


def kv_put(key: bytes, value: bytes, namespace: str) -> None:
    """Write Ray's internal KV from a process connected to Ray (`_internal_kv_put`)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_keys(prefix: bytes, namespace: str) -> list[bytes]:
    """The keys of Ray's internal KV under `prefix` (`_internal_kv_list`)."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_list(prefix, namespace=namespace)


def kv_del(key: bytes, namespace: str, by_prefix: bool = False) -> None:
    """Remove a key of Ray's internal KV, or every key under it (`_internal_kv_del`)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, del_by_prefix=by_prefix, namespace=namespace)


def drain_for_preemption(gcs: Any, node_id: str, reason: str, deadline_ms: int) -> tuple[bool, str]:
    """What `ray drain-node --reason=DRAIN_NODE_REASON_PREEMPTION` does, without a
    subprocess: `GcsClient.drain_node` with `ray.core.generated.autoscaler_pb2`'s reason."""
    from ray.core.generated import autoscaler_pb2

    preemption = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    return gcs.drain_node(node_id, preemption, reason, deadline_ms)


def draining_node_ids() -> set[str]:
    """The nodes being drained, from a process connected to Ray
    (`ray._private.state.state.get_draining_nodes`; public replacement: none)."""
    import ray._private.state

    return set(ray._private.state.state.get_draining_nodes())


def staying(table: list[dict[str, Any]], draining: set[str]) -> list[dict[str, Any]]:
    """The nodes of a `ray.nodes()` table that new workers can go to: alive, not draining."""
    return [n for n in table if n.get("Alive") and n["NodeID"] not in draining]


def staying_nodes() -> list[dict[str, Any]]:
    """`staying` on the cluster as it is now, from a process connected to Ray."""
    import ray

    return staying(ray.nodes(), draining_node_ids())


def node_death_reasons() -> dict[str, int]:
    """`ray.core.generated.common_pb2.NodeDeathInfo.Reason` by name (EXPECTED_TERMINATION,
    AUTOSCALER_DRAIN_PREEMPTED, ...): the codes in the GCS's node table."""
    from ray.core.generated import common_pb2

    return dict(common_pb2.NodeDeathInfo.Reason.items())


def node_alive_state() -> int:
    """`ray.core.generated.gcs_pb2.GcsNodeInfo.ALIVE`: a live node's state in the node table."""
    from ray.core.generated import gcs_pb2

    return gcs_pb2.GcsNodeInfo.GcsNodeState.Value("ALIVE")


def local_gcs_address() -> str | None:
    """The GCS of the Ray running on this machine, as `ray.init("auto")` finds it
    (`ray._private.services.canonicalize_bootstrap_address`)."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address("auto")


def quiet_token_setup_log() -> None:
    """Ray logs "Token authentication is enabled" at every private in-process start."""
    import logging

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
