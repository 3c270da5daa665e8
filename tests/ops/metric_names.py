"""Every metric name the alert rules and the Grafana dashboards depend on, for the live-scrape check."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS_FILE = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARDS_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"

# Prometheus writes `up` for every scrape target itself; the gateway never exports it, so a check
# against a live /metrics page must leave these out (see exported_metric_names_used).
SYNTHETIC_METRICS = frozenset({"up"})

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names_in_expr(expr: str) -> set[str]:
    """Metric names in one PromQL expression, parsed loosely.

    Keeps identifiers that start with ``ai_api_`` and the synthetic ``up``; label values are
    dropped first so ``{status="up"}`` is not a metric. Histogram series suffixes are stripped,
    because /metrics lists the family name a scrape test looks for.
    """
    code = _STRING_LITERAL.sub('""', expr)
    return {
        _histogram_family(name)
        for name in _IDENTIFIER.findall(code)
        if name.startswith("ai_api_") or name in SYNTHETIC_METRICS
    }


def _histogram_family(name: str) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def alert_expressions(alerts_file: Path = ALERTS_FILE) -> list[str]:
    """The ``expr`` of every rule in a Prometheus rules file."""
    document = yaml.safe_load(alerts_file.read_text(encoding="utf-8"))
    return [str(rule["expr"]) for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions(dashboard_file: Path) -> list[str]:
    """Every PromQL query in a Grafana dashboard: panel targets (rows included) and variable queries."""
    dashboard = json.loads(dashboard_file.read_text(encoding="utf-8"))
    queries = [
        str(target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    return queries + list(_variable_queries(dashboard))


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels of a dashboard, including those folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variable_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        yield str(query.get("query", "")) if isinstance(query, dict) else str(query)


def metric_names_used() -> set[str]:
    """Every metric referenced by deploy/prometheus/alerts.yaml and the dashboards in deploy/grafana.

    A renamed or dropped metric would silently blind the alerts and panels that name it; a test
    that scrapes a live gateway compares its /metrics against this set.
    """
    expressions = alert_expressions()
    for dashboard_file in sorted(DASHBOARDS_DIR.glob("*.json")):
        expressions.extend(dashboard_expressions(dashboard_file))
    return {name for expr in expressions for name in metric_names_in_expr(expr)}


def exported_metric_names_used() -> set[str]:
    """metric_names_used() without the names Prometheus synthesises (``up``): what /metrics must show."""
    return metric_names_used() - SYNTHETIC_METRICS
