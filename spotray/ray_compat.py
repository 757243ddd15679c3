"""The one place that touches Ray's private names (Ray 2.60).

Each function says which private name it uses and the public API that would replace it.
A Ray that moves one of them fails here, by name, instead of silently elsewhere.
"""

from __future__ import annotations

import os
import socket


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
