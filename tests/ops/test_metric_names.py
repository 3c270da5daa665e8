"""metric_names: the loose PromQL parse that lists what the alerts and dashboards depend on."""

from __future__ import annotations

from .metric_names import exported_metric_names_used, metric_names_in_expr, metric_names_used

# Every metric the alert rules and dashboard are meant to watch (the contract in issue 5).
EXPECTED = {
    "ai_api_requests_total",
    "ai_api_request_duration_seconds",
    "ai_api_tokens_total",
    "ai_api_cost_total",
    "ai_api_active_requests",
    "ai_api_time_to_first_token_seconds",
    "ai_api_gateway_overhead_seconds",
    "ai_api_upstream_errors_total",
    "ai_api_upstream_attempts_total",
    "ai_api_auth_failures_total",
    "ai_api_dependency_up",
    "ai_api_unpriced_requests_total",
    "ai_api_rate_limited_total",
    "ai_api_rate_limiter_degraded",
    "ai_api_shared_state_seconds",
    "ai_api_budget_utilization_ratio",
    "ai_api_budget_alerts_total",
    "ai_api_ledger_backlog",
    "ai_api_deployment_state",
    "up",
}


def test_histogram_series_suffixes_are_stripped_to_the_family_name() -> None:
    expr = "sum(rate(ai_api_x_seconds_bucket[5m])) / sum(rate(ai_api_y_seconds_sum[5m])) + ai_api_z_count"
    assert metric_names_in_expr(expr) == {"ai_api_x_seconds", "ai_api_y_seconds", "ai_api_z"}


def test_label_values_and_other_identifiers_are_not_metrics() -> None:
    expr = (
        'sum by (provider) (rate(ai_api_requests_total{status="up",model=~"ai_api_fake"}[$__rate_interval]))'
    )
    assert metric_names_in_expr(expr) == {"ai_api_requests_total"}


def test_up_is_a_metric_but_a_word_containing_it_is_not() -> None:
    assert metric_names_in_expr('up{job="ai-api"} == 0 and group(startup)') == {"up"}


def test_names_used_by_alerts_and_dashboard_are_the_contracted_set() -> None:
    assert metric_names_used() == EXPECTED


def test_exported_names_leave_out_what_prometheus_synthesises() -> None:
    assert exported_metric_names_used() == EXPECTED - {"up"}
