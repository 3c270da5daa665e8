"""The Alertmanager config: amtool accepts it, critical pages PagerDuty, warnings go to Slack, no secrets."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from .metric_names import REPO_ROOT

ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def _amtool(amtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([amtool, *args], capture_output=True, text=True, check=False, timeout=60)


def test_amtool_check_config_accepts_it(amtool: str) -> None:
    result = _amtool(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=ServiceDown"], "pagerduty-critical"),
        (["severity=critical", "alertname=UpstreamProviderFailing", "provider=openai"], "pagerduty-critical"),
        (["severity=warning", "alertname=HighLatency"], "slack-warnings"),
        (["alertname=SomethingWithoutSeverity"], "slack-warnings"),
    ],
)
def test_alert_is_routed_by_severity(amtool: str, labels: list[str], receiver: str) -> None:
    result = _amtool(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_receivers_read_their_keys_from_files_not_from_the_config() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    pagerduty = receivers["pagerduty-critical"]["pagerduty_configs"][0]
    slack = receivers["slack-warnings"]["slack_configs"][0]
    assert pagerduty["routing_key_file"].startswith("/etc/alertmanager/secrets/")
    assert slack["api_url_file"].startswith("/etc/alertmanager/secrets/")
    inline_secret_keys = {"routing_key", "service_key", "api_url", "slack_api_url"}
    assert not inline_secret_keys & (set(pagerduty) | set(slack) | set(config.get("global", {})))
