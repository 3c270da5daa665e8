"""Routing strategies and circuit breakers through a real gateway over two fake OpenAI upstreams, with
`/admin/deployments`, `/health` and `ai_api_deployment_state` showing what the router sees."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ferryman.testing import FakeOpenAI, Reply
from tests.api.fleet import FREE, openai_deployment
from tests.conftest import RunningGateway

MASTER = "strategies-master-key"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI() as first, FakeOpenAI() as second:
        yield first, second


def deployment(fake: FakeOpenAI, name: str, **extra: Any) -> dict[str, Any]:
    return openai_deployment(fake, FREE, name=name, **extra)


def config(strategy: str, *deployments: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "master_key": MASTER,
        "retries": {"max_attempts_per_deployment": 1},
        "models": [{"name": "chat", "strategy": strategy, "deployments": list(deployments)}],
        **top,
    }


def chat(gateway: RunningGateway, times: int) -> list[int]:
    headers = {"authorization": f"Bearer {MASTER}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
        return [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(times)]


def admin_deployments(gateway: RunningGateway) -> dict[str, dict[str, Any]]:
    headers = {"authorization": f"Bearer {MASTER}"}
    rows = httpx.get(gateway.url + "/admin/deployments", headers=headers, timeout=5).json()["data"]
    return {row["deployment"]: row for row in rows}


def test_lowest_latency_sends_traffic_to_the_fast_upstream(
    gateway_factory: Any, upstreams: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    slow, fast = upstreams
    slow.script.set_default(Reply.echo(delay=0.2))
    gateway = gateway_factory(config("lowest_latency", deployment(slow, "slow"), deployment(fast, "fast")))
    assert chat(gateway, 30) == [200] * 30
    assert len(fast.requests) >= 25, (len(slow.requests), len(fast.requests))
    rows = admin_deployments(gateway)
    assert rows["slow"]["strategy"] == "lowest_latency"
    assert rows["slow"]["latency_ms"] > 150 > rows["fast"]["latency_ms"]
    assert rows["fast"]["in_flight"] == 0


def test_priority_uses_the_first_until_its_circuit_opens(
    gateway_factory: Any, upstreams: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    primary, backup = upstreams
    gateway = gateway_factory(
        config(
            "priority",
            deployment(backup, "backup", priority=2),
            deployment(primary, "primary", priority=1),
            breaker={"failure_threshold": 3, "cooldown_seconds": 60},
        )
    )
    assert chat(gateway, 5) == [200] * 5
    assert (len(primary.requests), len(backup.requests)) == (5, 0)
    primary.script.set_default(Reply.error(503))
    assert chat(gateway, 3) == [200] * 3  # each fell back to the backup
    assert len(primary.requests) == 8
    assert chat(gateway, 5) == [200] * 5
    assert len(primary.requests) == 8  # open: passed over
    rows = admin_deployments(gateway)
    assert rows["primary"]["circuit"]["state"] == "open"
    assert rows["primary"]["circuit"]["retry_in_seconds"] > 50
    assert rows["backup"]["circuit"]["state"] == "closed"
    health = {d["deployment"]: d for d in httpx.get(gateway.url + "/health", timeout=5).json()["deployments"]}
    assert health["primary"]["circuit"] == "open" and health["primary"]["state"] == "failing"
    scrape = httpx.get(gateway.url + "/metrics", timeout=5).text
    assert 'ai_api_deployment_state{deployment="primary"} 2.0' in scrape
    assert 'ai_api_deployment_state{deployment="backup"} 0.0' in scrape

    primary.script.set_default(None)  # fixed: an operator closes the circuit instead of waiting
    headers = {"authorization": f"Bearer {MASTER}"}
    reset = httpx.post(gateway.url + "/admin/deployments/primary/reset", headers=headers, timeout=5)
    assert reset.status_code == 200 and reset.json()["data"][0]["circuit"]["state"] == "closed"
    assert chat(gateway, 2) == [200] * 2
    assert len(primary.requests) == 10
    assert 'ai_api_deployment_state{deployment="primary"} 0.0' in httpx.get(gateway.url + "/metrics").text


def test_resetting_an_unknown_deployment_is_404(
    gateway_factory: Any, upstreams: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    first, _ = upstreams
    gateway = gateway_factory(config("weighted", deployment(first, "openai/gpt-4o-mini")))
    headers = {"authorization": f"Bearer {MASTER}"}
    missing = httpx.post(gateway.url + "/admin/deployments/nope/reset", headers=headers, timeout=5)
    assert missing.status_code == 404
    found = httpx.post(
        gateway.url + "/admin/deployments/openai/gpt-4o-mini/reset", headers=headers, timeout=5
    )
    assert found.status_code == 200  # labels hold slashes
    assert httpx.get(gateway.url + "/admin/deployments", timeout=5).status_code == 401
