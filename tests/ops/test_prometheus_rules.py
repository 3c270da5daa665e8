"""The alert rules and scrape config: promtool checks, promtool unit tests, and the rules' own contract."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .metric_names import ALERTS_FILE, REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"

# The seed's four rules (production-deployment-guide.md, "Alerting Rules"), copied here so a drift
# in alerts.yaml is caught without reading the seed at test time. Names, durations, labels and
# annotations are the seed's; "expr" is what alerts.yaml must hold (the seed's, unless corrected).
SEED_RULES: dict[str, dict[str, Any]] = {
    "HighErrorRate": {
        "expr": 'sum by (provider) (rate(ai_api_requests_total{status="error"}[5m])) / '
        "sum by (provider) (rate(ai_api_requests_total[5m])) > 0.05",
        "for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "High error rate detected",
            "description": "Error rate is {{ $value | humanizePercentage }}",
        },
    },
    "HighLatency": {
        "expr": "histogram_quantile(0.95, rate(ai_api_request_duration_seconds_bucket[5m]) ) > 10",
        "for": "5m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "High API latency", "description": "P95 latency is {{ $value }}s"},
    },
    "HighAPICost": {
        "expr": "sum by (provider) (rate(ai_api_cost_total[1h])) * 3600 > 10",
        "for": "10m",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "API costs are high", "description": "Spending ${{ $value }}/hour"},
    },
    "ServiceDown": {
        "expr": 'up{job="ai-api"} == 0',
        "for": "1m",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "AI API service is down"},
    },
}
# The seed's own expressions for the rules whose expression we correct, and why: the record of what
# changed, so nobody "restores" the seed's text.
SEED_EXPRESSIONS_CORRECTED: dict[str, tuple[str, str]] = {
    "HighErrorRate": (
        'rate(ai_api_requests_total{status="error"}[5m]) / rate(ai_api_requests_total[5m]) > 0.05',
        "nothing is summed, so each error series is divided by itself: the ratio is always 1, the alert "
        'fires on any sustained error and always says "100%"',
    ),
    "HighAPICost": (
        "rate(ai_api_cost_total[1h]) > 10",
        'rate() is per second, so this is $10 a second (~$36,000 an hour) while the description says "/hour"',
    ),
}
# UpstreamProviderFailing's former expression. Its denominator carries the provider that answered, so a
# primary failing behind a fallback had no series and the alert never fired (and a partly failing one
# looked worse than it was). The promtool cases that describe a fallback must fail against it.
UPSTREAM_REQUESTS_DENOMINATOR_EXPR = """(
  sum by (provider) (rate(ai_api_upstream_errors_total{error!="status_4xx"}[5m]))
  /
  sum by (provider) (rate(ai_api_requests_total[5m]))
) > 0.25
and
sum by (provider) (increase(ai_api_upstream_errors_total{error!="status_4xx"}[5m])) >= 5
"""
UPSTREAM_FALLBACK_CASES = {
    "fires for a primary that fails every attempt while its fallback answers every request",
    "stays quiet for a primary failing under a quarter of its attempts behind a fallback",
}
GATEWAY_ALERTS = {"UpstreamProviderFailing", "SlowTimeToFirstToken", "DependencyDegraded", "AuthFailureSpike"}
# Rate limits, budgets and the spend ledger (group ai_api_governance_alerts), with the severity each was
# given and why (the comment above each rule says more). A budget reached is the budget working: those
# two must never page.
GOVERNANCE_SEVERITIES = {
    # The gauge cannot say fail_open from fail_closed, and fail_closed refusals are in no requests series.
    "RateLimiterDegraded": "critical",
    "RateLimitRejectionsHigh": "warning",
    "BudgetNearlyExhausted": "warning",
    "BudgetExhausted": "warning",
    # Spend waits outside SQL: Redis memory or the replica's disk fills, reports lag.
    "LedgerBacklogGrowing": "critical",
    "UnpricedModelTraffic": "warning",
    "SharedStateSlow": "warning",
}
GOVERNANCE_ALERTS = set(GOVERNANCE_SEVERITIES)
ROUTING_ALERTS = {"DeploymentCircuitOpen"}
REQUIRED_ALERTS = set(SEED_RULES) | GATEWAY_ALERTS | GOVERNANCE_ALERTS | ROUTING_ALERTS
# Features whose alerts have not landed: the reserved block at the end of alerts.yaml keeps their place.
NOT_LANDED = ("retries/cache",)
LANDED = ("budgets", "rate limits", "spend ledger", "circuit breakers")
# Each governance rule's guard that its comment explains, the rule without it, and the promtool cases
# that must fail then: proof the cases test the decision, not only the happy path.
GOVERNANCE_GUARDS = {
    "every request refused leaves no requests series to divide by": (
        "RateLimitRejectionsHigh",
        "+ (sum(rate(ai_api_requests_total[5m])) or vector(0))",
        "+ sum(rate(ai_api_requests_total[5m]))",
        {"fires when the global limit refuses every request"},
    ),
    "one key at its limit in a quiet hour is not a trend": (
        "RateLimitRejectionsHigh",
        "and sum by (scope) (increase(ai_api_rate_limited_total[5m])) >= 30",
        "",
        {"stays quiet for one key at its limit in a quiet hour"},
    ),
    "other keys' settles overwrite a high reading": (
        "BudgetNearlyExhausted",
        "max_over_time(ai_api_budget_utilization_ratio[15m])",
        "ai_api_budget_utilization_ratio",
        {"fires for a key near its limit while other keys' settles overwrite the reading"},
    ),
    "a budget refuses requests before it reads 100%": (
        "BudgetExhausted",
        ">= 0.95",
        ">= 1",
        {"fires for an end user's daily budget that stopped at 97%"},
    ),
    "a stuck backlog does not grow": (
        "LedgerBacklogGrowing",
        "or ai_api_ledger_backlog > 1000",
        "",
        {"fires for a backlog stuck above two batches even though it does not grow"},
    ),
    "a backlog that is draining is not growing": (
        "LedgerBacklogGrowing",
        "ai_api_ledger_backlog > 0 and deriv(ai_api_ledger_backlog[5m]) > 0",
        "ai_api_ledger_backlog > 0",
        {"stays quiet while the backlog left by an outage drains below two batches"},
    ),
}
RULE_TEST_FILES = {
    "RateLimitRejectionsHigh": "rate_limit_rejections_high.yaml",
    "BudgetNearlyExhausted": "budget_nearly_exhausted.yaml",
    "BudgetExhausted": "budget_exhausted.yaml",
    "LedgerBacklogGrowing": "ledger_backlog_growing.yaml",
}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120, cwd=REPO_ROOT)


def _rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}


def _seconds(duration: str) -> float:
    parts = _DURATION_PART.findall(duration)
    assert "".join(n + u for n, u in parts) == duration, f"unparsed duration {duration!r}"
    return sum(int(number) * _SECONDS_PER_UNIT[unit] for number, unit in parts)


def _alert_checks() -> list[tuple[str, float, bool]]:
    """(alertname, eval time in seconds, expects alerts?) for every check in every rule-test file."""
    checks = []
    for test_file in sorted(RULE_TESTS_DIR.glob("*.yaml")):
        for case in yaml.safe_load(test_file.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                expected = bool(check.get("exp_alerts"))
                checks.append((check["alertname"], _seconds(check["eval_time"]), expected))
    return checks


def test_promtool_check_rules_accepts_alerts_file(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    test_files = sorted(str(path) for path in RULE_TESTS_DIR.glob("*.yaml"))
    assert test_files, "no promtool rule tests found"
    result = _run(promtool, "test", "rules", *test_files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(test_files)


def test_promtool_check_config_accepts_scrape_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_scrapes_gateway_as_job_ai_api_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ai-api"]["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["alerts.yaml"]
    assert config["alerting"]["alertmanagers"], "alerts must be sent to Alertmanager"


def _normalised_expr(name: str) -> str:
    return " ".join(_rules()[name]["expr"].split())


@pytest.mark.parametrize("name", sorted(SEED_RULES))
def test_seed_rule_keeps_name_for_labels_and_annotations(name: str) -> None:
    rule, seed = _rules()[name], SEED_RULES[name]
    assert rule["for"] == seed["for"]
    assert rule["labels"] == seed["labels"]
    extra_annotations = set(rule["annotations"]) - set(seed["annotations"])
    assert {key: rule["annotations"][key] for key in seed["annotations"]} == seed["annotations"]
    assert extra_annotations == {"runbook_url"}


@pytest.mark.parametrize("name", sorted(SEED_RULES))
def test_seed_rule_expression_is_the_seeds_or_its_correction(name: str) -> None:
    assert _normalised_expr(name) == SEED_RULES[name]["expr"]


@pytest.mark.parametrize("name", sorted(SEED_EXPRESSIONS_CORRECTED))
def test_corrected_seed_expression_no_longer_holds_the_seeds_text(name: str) -> None:
    seed_expr, reason = SEED_EXPRESSIONS_CORRECTED[name]
    assert _normalised_expr(name) != seed_expr, f"{name} is back to the seed's expression: {reason}"


def _comment_above(name: str) -> str:
    """The contiguous comment lines directly above the rule's `- alert:` line."""
    lines = ALERTS_FILE.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == f"- alert: {name}")
    comment: list[str] = []
    while index > 0 and lines[index - 1].strip().startswith("#"):
        index -= 1
        comment.insert(0, lines[index].strip())
    return "\n".join(comment)


@pytest.mark.parametrize("name", sorted(SEED_EXPRESSIONS_CORRECTED))
def test_corrected_seed_rule_says_why_in_a_comment_above_it(name: str) -> None:
    comment = _comment_above(name)
    assert "# Corrected:" in comment, f"{name}: no comment above the rule says why it differs from the seed"


def test_every_required_alert_exists_with_a_routable_severity() -> None:
    rules = _rules()
    assert set(rules) == REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name


def test_every_alert_links_to_its_own_runbook_section() -> None:
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    anchors = {heading.lower() for heading in headings}
    for name, rule in _rules().items():
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert name.lower() in anchors, f"docs/runbook.md has no '## {name}' section"


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
def test_alert_has_a_firing_case_and_a_quiet_case_after_its_for_duration(name: str) -> None:
    wait = _seconds(_rules()[name].get("for", "0s"))
    checks = [(at, fires) for alert, at, fires in _alert_checks() if alert == name]
    assert any(fires for _, fires in checks), f"no promtool case proves {name} fires"
    # A quiet check before "for" has elapsed proves nothing: the alert could not have fired yet.
    assert any(not fires and at > wait for at, fires in checks), f"no promtool case proves {name} stays quiet"


def _reserved_block() -> str:
    """The comment block at the end of alerts.yaml that keeps a place for features not landed yet."""
    text = ALERTS_FILE.read_text(encoding="utf-8")
    _, marker, block = text.partition("# Reserved for features that have not landed yet.")
    assert marker, "alerts.yaml has no reserved block for later features"
    following = block.splitlines()[1:]  # the lines after the marker's own
    assert all(line.strip().startswith("#") for line in following if line.strip()), "a rule after the block"
    return block


def test_alerts_file_reserves_a_place_for_later_features() -> None:
    block = _reserved_block()
    for feature in NOT_LANDED:
        assert feature in block, f"alerts.yaml has no reserved place for {feature}"


def test_reserved_block_no_longer_lists_what_has_landed() -> None:
    # Landed features have their group: a reserved line for them would say their alerts are missing.
    block = _reserved_block()
    for feature in LANDED:
        assert feature not in block, f"{feature} has landed; drop it from the reserved block"


def test_governance_alerts_have_their_group_and_severity() -> None:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    groups = {group["name"]: group for group in document["groups"]}
    rules = {rule["alert"]: rule for rule in groups["ai_api_governance_alerts"]["rules"]}
    assert set(rules) == GOVERNANCE_ALERTS
    assert {name: rule["labels"]["severity"] for name, rule in rules.items()} == GOVERNANCE_SEVERITIES


@pytest.mark.parametrize("name", sorted(GOVERNANCE_ALERTS))
def test_governance_rule_says_why_in_a_comment_above_it(name: str) -> None:
    assert len(_comment_above(name).splitlines()) >= 2, f"{name}: no comment above the rule says why"


def _with_expr(alert: str, expr: str) -> dict[str, Any]:
    """alerts.yaml as a document, with one alert's expression replaced."""
    document: dict[str, Any] = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    rules = [rule for group in document["groups"] for rule in group["rules"] if rule.get("alert") == alert]
    assert len(rules) == 1, alert
    rules[0]["expr"] = expr
    return document


def _failed_case_names(promtool_output: str) -> set[str]:
    return set(re.findall(r"^\s*name: (.+),\s*$", promtool_output, flags=re.MULTILINE))


def test_upstream_alert_divides_by_attempts_not_by_answered_requests() -> None:
    expr = _normalised_expr("UpstreamProviderFailing")
    assert "rate(ai_api_upstream_attempts_total[5m])" in expr
    assert "ai_api_requests_total" not in expr, "the answering provider's requests hide a failing primary"


def test_upstream_fallback_cases_fail_against_the_requests_denominator(promtool: str, tmp_path: Path) -> None:
    # A primary that always fails behind a fallback has no ai_api_requests_total series: the old
    # division returned nothing and the alert never fired. The fallback cases must catch that.
    old_rules = tmp_path / "alerts.yaml"
    old_rules.write_text(
        yaml.safe_dump(_with_expr("UpstreamProviderFailing", UPSTREAM_REQUESTS_DENOMINATOR_EXPR)),
        encoding="utf-8",
    )
    tests = yaml.safe_load((RULE_TESTS_DIR / "upstream_provider_failing.yaml").read_text(encoding="utf-8"))
    tests["rule_files"] = [str(old_rules)]
    test_file = tmp_path / "upstream_provider_failing.yaml"
    test_file.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _run(promtool, "test", "rules", str(test_file))
    assert result.returncode != 0, "no promtool case catches the requests denominator"
    assert _failed_case_names(result.stdout + result.stderr) == UPSTREAM_FALLBACK_CASES


@pytest.mark.parametrize("guard", sorted(GOVERNANCE_GUARDS))
def test_governance_rule_guard_is_proved_by_its_cases(guard: str, promtool: str, tmp_path: Path) -> None:
    alert, kept, weakened, failing_cases = GOVERNANCE_GUARDS[guard]
    expr = _normalised_expr(alert)
    assert kept in expr, f"{alert} no longer holds {kept!r}: update GOVERNANCE_GUARDS"
    weakened_rules = tmp_path / "alerts.yaml"
    weakened_expr = expr.replace(kept, weakened)
    weakened_rules.write_text(yaml.safe_dump(_with_expr(alert, weakened_expr)), encoding="utf-8")
    tests = yaml.safe_load((RULE_TESTS_DIR / RULE_TEST_FILES[alert]).read_text(encoding="utf-8"))
    tests["rule_files"] = [str(weakened_rules)]
    test_file = tmp_path / RULE_TEST_FILES[alert]
    test_file.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _run(promtool, "test", "rules", str(test_file))
    assert result.returncode != 0, f"no promtool case of {alert} notices: {guard}"
    assert _failed_case_names(result.stdout + result.stderr) == failing_cases
