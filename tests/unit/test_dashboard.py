"""The Grafana dashboard (helm/heat-scheduler/dashboards/) asks only for metrics the scheduler
exports, under the names its Prometheus endpoint gives them, and every metric has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scheduler.telemetry import instruments

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "heat-scheduler" / "dashboards" / "heat-scheduler.json"
SECONDS = {
    instruments.DISPATCH_DURATION,
    instruments.ATTEMPT_DURATION,
    instruments.RPC_DURATION,
    instruments.LEADERSHIP_TERM_START,
}
COUNTERS = {
    instruments.RESULTS,
    instruments.LEASE_EXPIRATIONS,
    instruments.RETRIES,
    instruments.INSTANCE_FAILURES,
    instruments.PROVISIONING_ERRORS,
}

ATTRIBUTES = {instruments.RUNNER, instruments.DUTY, instruments.EPOCH, instruments.HOLDER}


def prometheus_names() -> dict[str, str]:
    """Prometheus name -> OpenTelemetry name, as the endpoint shows them."""
    names = {}
    for key, value in vars(instruments).items():
        if key.isupper() and isinstance(value, str) and "." in value and value not in ATTRIBUTES:
            name = value.replace(".", "_")
            if value in SECONDS:
                name += "_seconds"
            if value in COUNTERS:
                name += "_total"
            names[name] = value
    return names


def expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_the_dashboard_asks_for_exported_metrics_and_shows_them_all() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = prometheus_names()
    used = set()
    for expr in expressions(dashboard):
        # Metric names, not label names: drop selectors and grouping clauses first.
        bare = re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", expr)
        for name in re.findall(r"\b((?:heat|rpc|db)_[a-z_]+)\b", bare):
            base = re.sub(r"_(bucket|count|sum)$", "", name) if name not in known else name
            assert base in known, f"{name} in {expr!r} is not a metric the scheduler exports"
            used.add(known[base])
    assert used == set(known.values())
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
