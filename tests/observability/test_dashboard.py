"""The sample Grafana dashboard only queries metrics (and labels) that miniagent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from miniagent.observability import Redactor
from miniagent.observability._metrics import METRIC_NAMES, MetricsSink

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "miniagent-dashboard.json"
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _exported() -> dict[str, set[str]]:
    """Every sample name miniagent's collectors expose, with its labels."""
    sink = MetricsSink(CollectorRegistry(), clock=lambda: 0.0, redactor=Redactor())
    assert set(sink.label_names) == set(METRIC_NAMES)
    names: dict[str, set[str]] = {}
    for family, labels in sink.label_names.items():
        kind = METRIC_NAMES[family]
        for suffix in _SUFFIXES[kind]:
            sample = family if kind != "histogram" else family + suffix
            names[sample] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    return names


def _targets(panels: list[dict[str, Any]]) -> list[str]:
    exprs = []
    for panel in panels:
        exprs += [t["expr"] for t in panel.get("targets", [])]
        exprs += _targets(panel.get("panels", []))
    return exprs


def test_the_dashboard_is_valid_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "miniagent" and dashboard["uid"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "agent"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = _exported()
    exprs = _targets(dashboard["panels"])
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        metrics = set(re.findall(r"\bminiagent_[a-z_]+\b", expr))
        assert metrics, expr
        unknown = metrics - set(exported)
        assert not unknown, f"{expr}: {unknown}"
        used |= metrics
        labels = set().union(*(exported[m] for m in metrics))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {label.strip() for label in group.split(",")}
            assert grouped <= labels, f"{expr}: {grouped - labels}"
        for selector in re.findall(r"\{([^}]*)\}", expr):
            matched = set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector))
            assert matched <= labels, f"{expr}: {matched - labels}"
    # Every family appears on the dashboard.
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert families == set(METRIC_NAMES)
