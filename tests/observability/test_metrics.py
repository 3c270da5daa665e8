"""Metric values after known traffic, across workers, and every metric the alerts and dashboard use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferryman.testing import FakeGemini, Reply
from tests.conftest import RunningGateway
from tests.ops.metric_names import exported_metric_names_used
from tests.processes import gateway_process

FREE = {"input_per_mtok": 0, "output_per_mtok": 0}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def gateway(gateway_factory: Any, fake: FakeGemini) -> RunningGateway:
    deployment = {
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "api_base": fake.base_url,
        "api_key": "k",
    }
    # one attempt per deployment: each scripted fault is counted as it happens (retries: test_resilience.py)
    retries = {"max_attempts_per_deployment": 1}
    return gateway_factory({"models": [{"name": "flash", "deployments": [deployment]}], "retries": retries})  # type: ignore[no-any-return]


def chat(gateway: RunningGateway, *, stream: bool = False) -> httpx.Response:
    body = {"model": "flash", "stream": stream, "messages": [{"role": "user", "content": "one two three"}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)


def scrape(gateway: RunningGateway) -> str:
    response = httpx.get(gateway.url + "/metrics", timeout=10)
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_counts_tokens_and_cost_after_known_traffic(gateway: RunningGateway, fake: FakeGemini) -> None:
    for _ in range(3):
        assert chat(gateway).status_code == 200
    fake.script.reply(Reply.error(500, "boom"))
    assert chat(gateway).status_code == 502
    text = scrape(gateway)
    assert value(text, "ai_api_requests_total", provider="gemini", status="success", model="flash") == 3
    assert value(text, "ai_api_requests_total", provider="gemini", status="error", model="flash") == 1
    assert value(text, "ai_api_tokens_total", provider="gemini", model="flash", type="input") == 9
    assert (
        value(text, "ai_api_tokens_total", provider="gemini", model="flash", type="output") == 3 * 4
    )  # "echo: one two three"
    expected_cost = 3 * (3 * 0.30 + 4 * 2.50) / 1e6
    assert value(text, "ai_api_cost_total", provider="gemini", model="flash") == pytest.approx(expected_cost)
    assert value(text, "ai_api_request_duration_seconds_count", provider="gemini", model="flash") == 4
    assert value(text, "ai_api_gateway_overhead_seconds_count", provider="gemini") == 4
    assert (
        value(text, "ai_api_upstream_errors_total", provider="gemini", model="flash", error="status_5xx") == 1
    )


def test_active_gauge_returns_to_zero_after_streams(gateway: RunningGateway, fake: FakeGemini) -> None:
    fake.script.reply(Reply.text("a b c", chunks=3, chunk_delay=0.3))
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "flash", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        timeout=10,
    ) as response:
        chunks = response.iter_bytes()
        next(chunks)
        assert value(scrape(gateway), "ai_api_active_requests", provider="gemini") == 1
        for _ in chunks:
            pass
    text = scrape(gateway)
    assert value(text, "ai_api_active_requests", provider="gemini") == 0
    assert value(text, "ai_api_time_to_first_token_seconds_count", provider="gemini", model="flash") == 1


def test_every_metric_the_alerts_and_dashboard_use_is_exported(
    gateway_factory: Any, fake: FakeGemini, tmp_path: Path
) -> None:
    """Each family is on the page and has samples from traffic that exercises it, not just `# HELP`.

    The gateway has a database (so `ai_api_dependency_up` has something to report), a master key (so a
    bad key is an auth failure), a model with no price (so requests can be unpriced), a model allowing
    one request a minute (so one is refused by a rate limit, through the timed shared state) and an
    end-user budget alerting at its first spend (so a budget settles, reports its level and announces a
    crossing). The limiter and ledger gauges carry no labels: they are on the page from the start.
    """
    deployment = {
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "api_base": fake.base_url,
        "api_key": "k",
    }
    unpriced = {"name": "house", "deployments": [{"provider": "fake", "model": "house-model-without-price"}]}
    limited = {
        "name": "limited",
        "limits": {"rpm": 1},
        "deployments": [{"provider": "fake", "model": "limited-model", "price": FREE}],
    }
    gateway: RunningGateway = gateway_factory(
        {
            "master_key": "sk-metrics-master",
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'ferryman.db'}",
            "models": [{"name": "flash", "deployments": [deployment]}, unpriced, limited],
            # $1 a day per end user; a request costs ~$0.00001, so only a threshold this low is crossed.
            "budgets": {"end_user": {"daily_usd": 1.0}, "alert_thresholds": [0.000001]},
        }
    )
    key = {"authorization": "Bearer sk-metrics-master"}

    def post(body: dict[str, Any], headers: dict[str, str]) -> int:
        return httpx.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10
        ).status_code

    hello = [{"role": "user", "content": "one two three"}]
    assert post({"model": "flash", "messages": hello}, key) == 200
    assert post({"model": "flash", "messages": hello, "stream": True}, key) == 200  # time to first token
    fake.script.reply(Reply.error(503, "down"), times=2)  # the gateway retries once
    assert post({"model": "flash", "messages": hello}, key) == 502  # an upstream error
    assert post({}, {"authorization": "Bearer x"}) == 401  # an auth failure
    assert post({"model": "house", "messages": hello}, key) == 200  # an unpriced request
    assert post({"model": "limited", "messages": hello}, key) == 200
    assert post({"model": "limited", "messages": hello}, key) == 429  # refused by the model's rate limit
    end_user = key | {"x-ferryman-end-user": "alice"}
    assert post({"model": "flash", "messages": hello}, end_user) == 200  # settles alice's budget
    families = {family.name: family for family in text_string_to_metric_families(scrape(gateway))}
    exported = set(families)
    # prometheus_client names a counter's family without its `_total` suffix.
    exported |= {name + "_total" for name in exported}
    missing = exported_metric_names_used() - exported
    assert not missing, f"alerts or dashboard use metrics the gateway does not export: {sorted(missing)}"
    for name in sorted(exported_metric_names_used()):
        family = families.get(name) or families[name.removesuffix("_total")]
        assert family.samples, f"{name} is declared but has no sample after the traffic that exercises it"
        if family.type in {"counter", "histogram"}:
            # A gauge may rightly read 0 (nothing in flight); a counter or histogram the traffic
            # exercised has counted something. `_created` is a timestamp, not a count.
            counted = [s for s in family.samples if not s.name.endswith("_created") and s.value > 0]
            assert counted, f"{name} has samples but counted nothing"


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    config = {
        "models": [
            {
                "name": "fake-model",
                "deployments": [{"provider": "fake", "model": "fake-model", "price": FREE}],
            }
        ]
    }
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with gateway_process(config, tmp_path, workers=2, env=env) as (_, url):
        with httpx.Client(base_url=url, timeout=10) as client:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(40):
                # a fresh connection each time, so the kernel spreads them over both workers
                assert httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
            text = client.get("/metrics").text
    assert value(text, "ai_api_requests_total", provider="fake", status="success", model="fake-model") == 40
    assert len(list((tmp_path / "metrics").glob("counter_*.db"))) == 2  # both workers served and wrote


def test_metrics_behind_a_token(gateway_factory: Any) -> None:
    config = {
        "metrics": {"token": "scrape-secret-123"},
        "models": [{"name": "m", "deployments": [{"provider": "fake", "model": "m", "price": FREE}]}],
    }
    gateway: RunningGateway = gateway_factory(config)
    assert httpx.get(gateway.url + "/metrics", timeout=5).status_code == 401
    wrong = httpx.get(gateway.url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert "scrape-secret-123" not in wrong.text
    right = httpx.get(
        gateway.url + "/metrics", headers={"authorization": "Bearer scrape-secret-123"}, timeout=5
    )
    assert right.status_code == 200
    assert "ai_api_requests_total" in right.text
