"""The bill against dollars worked out by hand, to the cent."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from spotray.cost.bill import make_bill
from spotray.cost.ledger import Ledger, Node, RunEvent, RunRecorder, ledger_problem
from spotray.cost.plan import make_plan
from spotray.cost.prices import PriceSeries, SpotPrice, UnknownInstanceTypeError, load_on_demand
from tests.conftest import run_spotray

P38 = "p3.8xlarge"
OD = {P38: 12.24}


def at(hhmm: str) -> float:
    return datetime.fromisoformat(f"2026-11-26T{hhmm}:00+00:00").timestamp()


def series(*changes: tuple[str, float]) -> PriceSeries:
    s = PriceSeries()
    for hhmm, price in changes:
        s.add(at(hhmm), price)
    return s


# us-east-1a: 0.90 in force before the node starts, 1.20 from 12:00; us-east-1b: 0.95, 1.10 from 14:00.
SPOT = {(P38, "us-east-1a"): series(("09:00", 0.90), ("12:00", 1.20)),
        (P38, "us-east-1b"): series(("08:00", 0.95), ("14:00", 1.10))}  # fmt: skip
PREEMPTED = Node("i-a", "c", P38, "us-east-1a", "spot", at("10:00"), at("13:30"), "preempted")
ON_DEMAND = Node("i-b", "c", P38, "us-east-1a", "on-demand", at("10:00"), at("14:00"), "scaled in")
RUNNING = Node("i-c", "c", P38, "us-east-1b", "spot", at("11:00"))
RUN = [
    RunEvent("r", "start", at("10:05"), 0),
    RunEvent("r", "checkpoint", at("13:00"), 100),
    RunEvent("r", "checkpoint", at("13:20"), 120),
    RunEvent("r", "start", at("13:32"), 120),  # the restart after the preemption
]


def test_scenario_equals_the_hand_computed_bill() -> None:
    bill = make_bill([PREEMPTED, ON_DEMAND, RUNNING], SPOT, OD, RUN, now=at("15:00"))
    a, b, c = bill.nodes
    # A: 10:00-12:00 at 0.90 + 12:00-13:30 at 1.20 (the price change splits its life).
    assert round(a.cost, 2) == 1.80 + 1.80
    assert round(a.on_demand_cost, 2) == 42.84  # 3.5 h x 12.24
    assert round(b.cost, 2) == round(b.on_demand_cost, 2) == 48.96  # 4 h on demand
    # C, still running at 15:00: 11:00-14:00 at 0.95 + 14:00-15:00 at 1.10.
    assert round(c.cost, 2) == 3.95
    assert round(c.on_demand_cost, 2) == 48.96
    totals = bill.totals()
    assert totals["cost_usd"] == 56.51
    assert totals["on_demand_usd"] == 140.76
    assert totals["savings_usd"] == 84.25
    assert totals["savings_pct"] == 59.85  # 84.25 / 140.76
    # Lost: 13:20 (last checkpoint) to 13:30 redone, 13:30 to 13:32 restarting: 720 s of all
    # three nodes alive at 13:30, at 1.20 + 12.24 + 0.95 $/h.
    [p] = bill.preemptions
    assert (p.instance_id, p.last_checkpoint, p.restart) == ("i-a", at("13:20"), at("13:32"))
    assert totals["lost_work_usd"] == 2.88  # 14.39 $/h x 0.2 h = 2.878
    assert totals["goodput"] == round(1 - 3 * 720 / (11.5 * 3600), 4)
    assert totals["estimated_nodes"] == []


def test_a_node_in_an_az_without_history_is_estimated_from_the_other_azs() -> None:
    lone = Node("i-d", "c", P38, "us-east-1c", "spot", at("12:00"), at("13:00"), "scaled in")
    bill = make_bill([lone], SPOT, OD, [], now=at("15:00"))
    assert bill.estimated == ["i-d"]
    assert round(bill.cost, 2) == round((1.20 + 0.95) / 2, 2)  # the mean of 1a and 1b at 12:00
    only = make_bill([lone], {}, OD, [], now=at("15:00"))  # no history at all: on-demand
    assert round(only.cost, 2) == 12.24 and only.estimated == ["i-d"]


def test_a_node_without_history_follows_the_other_azs_price_changes_through_its_life() -> None:
    lone = Node("i-d", "c", P38, "us-east-1c", "spot", at("12:00"), at("15:00"), "scaled in")
    bill = make_bill([lone], SPOT, OD, [], now=at("16:00"))
    # 12:00-14:00 at the mean of 1.20 (1a) and 0.95 (1b); 14:00-15:00, after 1b's change to
    # 1.10, at the mean of 1.20 and 1.10.
    assert round(bill.cost, 4) == round(2 * (1.20 + 0.95) / 2 + 1 * (1.20 + 1.10) / 2, 4) == 3.3
    assert bill.estimated == ["i-d"]


def test_an_announced_preemption_right_after_its_checkpoint_costs_only_the_restart() -> None:
    events = [
        *RUN[:1],
        RunEvent("r", "checkpoint", at("13:30"), 125),
        RunEvent("r", "start", at("13:31"), 125),
    ]
    bill = make_bill([PREEMPTED, ON_DEMAND], SPOT, OD, events, now=at("15:00"))
    [p] = bill.preemptions
    assert p.lost_node_seconds == 2 * 60
    assert round(p.lost_cost, 4) == round((1.20 + 12.24) / 60, 4)


def test_plan_reproduces_the_article() -> None:
    plan = make_plan(P38, 8, 24, spot_price=0.92, on_demand_price=3.06)
    assert (round(plan.on_demand_usd, 2), round(plan.spot_usd, 2)) == (587.52, 176.64)
    assert round(plan.savings_pct, 1) == 69.9


def test_plan_with_interruptions_uses_young_daly() -> None:
    plan = make_plan(P38, 2, 10, 1.0, 12.24, interruptions_per_hour=1.0, checkpoint_seconds=18.0)
    assert plan.checkpoint_interval_s == pytest.approx(360.0)  # sqrt(2 x 18 x 3600)
    # 10 interruptions x 180 s redone, and 100 checkpoints x 18 s, on 2 nodes at $1/h.
    assert plan.lost_work_usd == pytest.approx(10 * 180 * 2 / 3600)
    assert plan.checkpoint_overhead_usd == pytest.approx(100 * 18 * 2 / 3600)


def test_the_table_has_the_right_p3_prices_and_names_close_types() -> None:
    table = load_on_demand()
    assert table.price("p3.2xlarge", "us-east-1") == 3.06
    assert table.price("p3.8xlarge", "us-east-1") == 12.24  # not the article's 3.06
    with pytest.raises(UnknownInstanceTypeError, match=r"did you mean p3\.8xlarge"):
        table.price("p3.8xlarg", "us-east-1")


def test_a_run_is_billed_for_its_own_time_from_the_ledger_alone(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        for node in (PREEMPTED, ON_DEMAND, RUNNING):
            ledger.upsert_node(node)
        ledger.add_spot_prices(
            SpotPrice(t, itype, az, p) for (itype, az), s in SPOT.items() for t, p in s.changes
        )
        for e in RUN:
            ledger.add_run_event(RunEvent(e.run, e.kind, e.time, e.step, "c"))
    args = ["cost", "--run", "r", "--offline", "--json", "--ledger", str(tmp_path / "ledger.db")]
    result = run_spotray(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    # The run went from 10:05 (first start) to 13:32 (last event): A 10:05-13:30, B 10:05-13:32,
    # C 11:00-13:32, at the prices in force.
    hours = (205 + 207 + 152) / 60
    assert totals["node_hours"] == round(hours, 4)
    spot_a = (115 / 60) * 0.90 + 1.5 * 1.20
    assert totals["cost_usd"] == round(spot_a + 3.45 * 12.24 + (152 / 60) * 0.95, 2)


def test_offline_says_it_read_the_ledger_only(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.add_run_event(RunEvent("r", "start", 1.0, 0, "empty-cluster"))
    args = ["cost", "--cluster", "empty-cluster", "--offline", "--ledger", str(tmp_path / "ledger.db")]
    result = run_spotray(args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: no nodes of cluster 'empty-cluster' in the ledger {tmp_path / 'ledger.db'}"
    )


@pytest.mark.parametrize("make", ["under a file", "not a database"])
def test_a_ledger_that_cannot_be_written_is_named_before_the_run_and_never_stops_it(
    tmp_path: Path, make: str
) -> None:
    if make == "under a file":
        (tmp_path / "a-file").write_text("x")
        path = tmp_path / "a-file" / "ledger.db"
    else:
        path = tmp_path / "ledger.db"
        path.write_text("garbage, not SQLite")
    problem = ledger_problem(path)
    assert problem is not None and str(path) in problem and "will not be recorded" in problem
    recorder = RunRecorder("t", cluster="c", path=path)
    from spotray.runtime import messages as msg

    started = msg.Started(
        step=0,
        world_size=2,
        nodes=1,
        resumed_from=None,
        recovered_unregistered=False,
        removed=[],
        skipped=[],
        pid=1,
    )
    recorder(None, [started])  # no exception: the run goes on
    recorder.close()
    assert ledger_problem(tmp_path / "fine.db") is None
