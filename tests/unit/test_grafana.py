"""The Grafana dashboard in the package charts every metric spotray exports, and only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

import spotray
from spotray.driver.metrics import GAUGES, NOTICE_COUNTER

DASHBOARD = Path(spotray.__file__).parent / "dashboards" / "grafana.json"


def queried_metrics(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {m for e in exprs for m in re.findall(r"\bray_(spotray_\w+)", e)}


def test_dashboard_charts_every_spotray_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {g.name for g in GAUGES} | {NOTICE_COUNTER}
    assert queried_metrics(dashboard) == exported


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "spotray" and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))  # Grafana keys panels by id
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__range"}
            assert used <= variables, (panel["title"], used)
