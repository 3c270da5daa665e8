"""The Grafana dashboard and its provisioning: valid JSON, the panels issue 5 names, PromQL that parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .metric_names import ALERTS_FILE, DASHBOARDS_DIR, REPO_ROOT, dashboard_expressions, iter_panels

DASHBOARD = DASHBOARDS_DIR / "ferryman-overview.json"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"
# Grafana's own variables, given values that make the expression valid PromQL for promtool.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")

# What issue 5 asks the dashboard to show: a panel title fragment and the metric its query must use.
REQUIRED_PANELS = [
    ("Requests / s", "ai_api_requests_total"),
    ("Error ratio", 'ai_api_requests_total{status="error"'),
    ("Request latency p50 / p95 / p99", "ai_api_request_duration_seconds_bucket"),
    ("Time to first token", "ai_api_time_to_first_token_seconds_bucket"),
    ("Gateway overhead", "ai_api_gateway_overhead_seconds_bucket"),
    ("Tokens / s by provider, model", "ai_api_tokens_total"),
    ("Cost per hour by provider and model", "ai_api_cost_total"),
    ("Spend in range by provider and model", "ai_api_cost_total"),
    ("Active requests", "ai_api_active_requests"),
    ("Upstream errors", "ai_api_upstream_errors_total"),
    ("Upstream error ratio per provider (attempts)", "ai_api_upstream_attempts_total"),
    ("Auth failures", "ai_api_auth_failures_total"),
    ("Dependency health", "ai_api_dependency_up"),
    ("Unpriced requests", "ai_api_unpriced_requests_total"),
    ("Rate-limit refusals / s by scope", "ai_api_rate_limited_total"),
    ("Rate limiter degraded", "ai_api_rate_limiter_degraded"),
    ("Shared-state (Redis) latency p50 / p95 / p99", "ai_api_shared_state_seconds_bucket"),
    ("Shared-state p99 by operation", "by (operation, le)"),
    ("Budget utilization by scope and window", "ai_api_budget_utilization_ratio"),
    ("Budget alerts announced", "ai_api_budget_alerts_total"),
    ("Spend ledger backlog", "ai_api_ledger_backlog"),
    ("Deployment circuit state", "ai_api_deployment_state"),
]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _queries(panel: dict[str, Any]) -> str:
    return "\n".join(str(target.get("expr", "")) for target in panel.get("targets", []))


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _panel_titled(dashboard: dict[str, Any], fragment: str) -> dict[str, Any]:
    matches = [panel for panel in iter_panels(dashboard) if fragment in panel.get("title", "")]
    assert matches, f"no panel titled like {fragment!r}"
    return matches[0]


def test_dashboard_identity_is_stable_for_provisioning(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "ferryman-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)


@pytest.mark.parametrize(("title", "metric"), REQUIRED_PANELS)
def test_dashboard_has_panel(dashboard: dict[str, Any], title: str, metric: str) -> None:
    assert metric in _queries(_panel_titled(dashboard, title))


def test_latency_panels_show_p50_p95_and_p99(dashboard: dict[str, Any]) -> None:
    for title in (
        "Request latency",
        "Time to first token p50",
        "Gateway overhead",
        "Shared-state (Redis) latency",
    ):
        queries = _queries(_panel_titled(dashboard, title))
        for quantile in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({quantile}," in queries, (title, quantile)


def test_tokens_and_cost_are_broken_down_by_provider_and_model(dashboard: dict[str, Any]) -> None:
    for title in ("Tokens / s", "Cost per hour", "Spend in range by provider"):
        assert "by (provider, model" in _queries(_panel_titled(dashboard, title)), title


def test_upstream_error_ratio_panel_divides_like_the_alert(dashboard: dict[str, Any]) -> None:
    # Per attempt, 4xx left out: the panel shows what UpstreamProviderFailing compares with 25%.
    # Dividing by ai_api_requests_total would hide a primary whose fallback answers every request.
    queries = _queries(_panel_titled(dashboard, "Upstream error ratio per provider"))
    numerator, _, denominator = queries.partition(" / ")
    assert 'ai_api_upstream_errors_total{error!="status_4xx"' in numerator
    assert "ai_api_upstream_attempts_total" in denominator
    assert "ai_api_requests_total" not in queries


def test_provider_and_model_variables_list_every_provider_called(dashboard: dict[str, Any]) -> None:
    # A primary that fails every call never answers a request, so only its attempts name it.
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    for name in ("provider", "model"):
        assert "ai_api_upstream_attempts_total" in variables[name]["query"]["query"], name


def test_later_features_have_a_reserved_row(dashboard: dict[str, Any]) -> None:
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert any("Cache" in row and "retries" in row and "circuit breakers" in row for row in rows)
    # Budgets and rate limits have landed: their row holds panels, not a promise.
    assert not any("Budgets" in row and "arrive with" in row for row in rows)


def test_budget_panel_marks_the_thresholds_the_alerts_use(dashboard: dict[str, Any]) -> None:
    # The dashed lines are where BudgetNearlyExhausted and BudgetExhausted fire; moving one without the
    # other would show a budget as fine while the alert is already posting.
    panel = _panel_titled(dashboard, "Budget utilization by scope and window")
    marked = {step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]} - {None}
    rules = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alert_rules()}
    assert marked == {0.8, 0.95}
    assert ">= 0.8 < 0.95" in rules["BudgetNearlyExhausted"]
    assert rules["BudgetExhausted"].endswith(">= 0.95")


def test_panel_ids_are_unique_and_queries_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in cells, f"{panel['title']} overlaps {cells.get((row, column))}"
                cells[(row, column)] = panel["title"]


def _as_promql(expr: str, variables: set[str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"undefined dashboard variable ${name} in {expr}"
        return ".*"

    return _VARIABLE.sub(substitute, expr)


def test_every_panel_query_is_valid_promql(dashboard: dict[str, Any], promtool: str, tmp_path: Path) -> None:
    # promtool has no offline expression checker, but it parses every recording rule's expr.
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    expressions = [expr for expr in dashboard_expressions(DASHBOARD) if not expr.startswith("label_values(")]
    rules = [
        {"record": f"dashboard:query_{index}", "expr": _as_promql(expr, variables)}
        for index, expr in enumerate(expressions)
    ]
    rules_file = tmp_path / "dashboard_queries.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards_folder() -> None:
    datasources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yaml").read_text(encoding="utf-8")
    )
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "ferryman.yaml").read_text(encoding="utf-8"))
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
