"""Where a new worker group goes: the nodes with ready warm spares, when they can hold it.

The raylet's side (the group placed by the selector, a spare taken there) is exercised for
real by `tests/integration/test_placement.py`; here the choice meets clusters described as
`ray.nodes()` and the coordinator's reservation describe them.
"""

from __future__ import annotations

from typing import Any

from spotray.elastic.placement import rooms, selector, warm_nodes
from spotray.runtime.preload import forget_ready_spares

WORKER = {"CPU": 1.0, "spot": 1.0}


def node(node_id: str, cpus: float = 1.0, spot: float = 1.0) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": True, "Resources": {"CPU": cpus, "spot": spot}}


def workers_in(reserved: dict[str, dict[str, float]]) -> int:
    """Ray's elastic count, for one worker shape."""
    return sum(min(int(r.get(k, 0) // v) for k, v in WORKER.items()) for r in reserved.values())


def test_a_replacement_still_warming_is_left_for_the_survivor_and_the_spare_node() -> None:
    # The survivor b and the spare node c have had minutes; the replacement d joined at the
    # notice (its share of the reservation moved there from the draining node).
    room = rooms({"b": WORKER, "d": WORKER}, [node("b"), node("c"), node("d")], workers_in)
    assert room == {"b": 1, "c": 1, "d": 1}
    assert warm_nodes({"b": 1, "c": 1}, room, 2) == ["b", "c"]
    assert selector(["b", "c"]) == {"ray.io/node-id": "in(b,c)"}


def test_ray_places_the_group_when_the_ready_spares_cannot_hold_it_or_every_node_is_warm() -> None:
    room = {"b": 1, "c": 1, "d": 1}
    assert warm_nodes({"b": 1}, room, 2) is None  # one ready spare for two workers
    assert warm_nodes({}, room, 1) is None  # the first start: no spare yet
    assert warm_nodes({"b": 1, "c": 1, "d": 1}, room, 2) is None  # nothing to prefer


def test_a_nodes_ready_spares_count_up_to_the_workers_it_has_room_for() -> None:
    # Two nodes of 4 workers each; a has 4 ready spares, b 1: a holds 4 of the 5 workers.
    room = rooms({}, [node("a", cpus=4, spot=4), node("b", cpus=4, spot=4)], workers_in)
    assert room == {"a": 4, "b": 4}
    assert warm_nodes({"a": 6, "b": 0}, room, 4) == ["a"]
    assert warm_nodes({"a": 6, "b": 0}, room, 5) is None
    assert warm_nodes({"a": 3, "b": 1}, {**room, "c": 2}, 4) == ["a", "b"]


def test_only_nodes_that_stay_and_can_host_a_worker_have_room() -> None:
    # a is draining or gone (not in the table of nodes that stay), its share still reserved;
    # the head hosts no worker; c's share of the reservation is what counts, not its size.
    head = {"NodeID": "head", "Alive": True, "Resources": {"CPU": 1.0}}
    table = [head, node("b"), node("c", cpus=8, spot=8)]
    room = rooms({"a": WORKER, "c": {"CPU": 2.0, "spot": 2.0}}, table, workers_in)
    assert room == {"b": 1, "c": 2}
    assert warm_nodes({"a": 2, "head": 3, "b": 1}, room, 1) == ["b"]


def test_a_run_that_cannot_reach_its_cluster_at_the_end_keeps_the_marks_and_says_so(caplog) -> None:
    # No Ray here: the driver's last clean-up warns instead of failing a run that is over.
    forget_ready_spares("01000000")
    assert "could not remove the warm spares' ready marks" in caplog.text
