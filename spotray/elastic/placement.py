"""Where a new worker group goes: onto the nodes whose warm spares are ready, when they can hold it.

Ray places a worker group's bundles by its own scoring, blind to which nodes have an idle
worker process with its imports done (spotray.driver.warm). At an announced preemption the
replacement launched at the notice usually has one still importing at the deadline (a
new node, on a run's scale), while the spare node and the survivors have had minutes:
measured on the preemption head-to-head (BENCHMARKS.md), every such restart waited 5-7 s
for the rank that went to the replacement. So when the nodes with ready spares can hold
the whole group, the group is started there: a label selector on Ray's default
`ray.io/node-id` label, which Ray Train takes from its controller callbacks
(`on_controller_start_worker_group`). Otherwise Ray places it as before; a cold node
is slower, never wrong.

A node's room is what its share of the job's reservation holds, or, outside the
reservation, what its resources hold (as draining nodes' shares move to spare nodes,
spotray.elastic.recovery). A selected node that goes in the instant before the group is
placed makes the start wait for Ray Train's start timeout, as any lost node does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NODE_ID_LABEL = "ray.io/node-id"  # Ray's default label: every node carries its id


def rooms(
    reserved: dict[str, dict[str, float]], staying: list[dict[str, Any]], workers_in: Callable[[dict], int]
) -> dict[str, int]:
    """By node id: how many workers each node that stays can take (`staying`, a `ray.nodes()`
    table), from its share of the reservation where it has one, else from its resources;
    `workers_in({node: resources})` counts the workers resources hold."""
    room = {}
    for node in staying:
        node_id = node["NodeID"]
        room[node_id] = workers_in({node_id: reserved.get(node_id, node.get("Resources", {}))})
    return {node_id: n for node_id, n in room.items() if n > 0}


def warm_nodes(ready: dict[str, int], room: dict[str, int], workers: int) -> list[str] | None:
    """The nodes to start `workers` workers on: those with room and ready spares, when their
    spares can take every worker and some node with room has none ready; else None (Ray
    places the group as it would)."""
    warm = sorted(node for node in room if ready.get(node, 0) > 0)
    if len(warm) == len(room) or sum(min(ready[n], room[n]) for n in warm) < workers:
        return None
    return warm


def selector(nodes: list[str]) -> dict[str, str]:
    """A label selector that keeps a group's bundles on `nodes`."""
    return {NODE_ID_LABEL: f"in({','.join(nodes)})"}
