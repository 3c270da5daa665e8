"""Money across replicas: three gateway processes on one Redis and one PostgreSQL never admit more than
a budget, refuse the rest before the upstream, and account for every cent in /v1/usage and the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.testing import FakeOpenAI
from tests.api.fleet import burst, openai_deployment, worst_case_upstream
from tests.api.replicas import gateway_processes
from tests.store.fixtures import fresh_postgres_database, throwaway_redis

pytestmark = pytest.mark.slow
MASTER = "sk-money-master"
KEY = "fm-money-key"
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "bill me please"}],
    "max_tokens": 10,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, float]]:
    """A slow upstream that spends exactly each request's worst case: (the fake, that cost in USD)."""
    with worst_case_upstream(BODY, delay=1.0) as upstream:
        yield upstream


def test_three_replicas_never_overshoot_a_budget_and_account_for_every_request(
    tmp_path: Path, postgres_admin: str, upstream: tuple[FakeOpenAI, float]
) -> None:
    fake, each = upstream
    budget = 20 * each + each / 2  # room for 20 requests, not 21
    deployment = openai_deployment(fake)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(throwaway_redis())
        database_url = stack.enter_context(fresh_postgres_database(postgres_admin))
        config = {
            "master_key": MASTER,
            "database_url": database_url,
            "redis_url": redis_url,
            "server": {"shutdown_delay_seconds": 0},
            "keys": [{"alias": "money", "key": KEY, "budget": {"daily_usd": budget}}],
            "models": [{"name": "chat", "deployments": [deployment]}],
        }
        urls = [url for _, url in gateway_processes(stack, config, tmp_path)]
        before = len(fake.requests)
        responses = asyncio.run(burst(urls, BODY, KEY, 100))
        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        usage = httpx.get(urls[0] + "/v1/usage", headers={"authorization": f"Bearer {KEY}"}).json()
        ledger_total = _ledger_total(urls[1])
    assert len(admitted) == 20
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert {r.json()["error"]["type"] for r in refused} == {"insufficient_quota"}
    assert len(fake.requests) - before == 20  # refused requests never reached the upstream
    spent = sum(float(r.headers["x-ferryman-cost-usd"]) for r in admitted)
    assert spent <= budget
    daily = usage["windows"]["daily"]
    assert daily["spent_usd"] == pytest.approx(spent, abs=1e-9)
    assert daily["budget_usd"] == pytest.approx(budget)
    assert daily["remaining_usd"] == pytest.approx(budget - spent, abs=1e-9)
    assert ledger_total == pytest.approx(spent, abs=1e-9)


def _ledger_total(url: str) -> float:
    """The SQL ledger's total once the feeder has drained the Redis stream into it."""
    deadline = time.monotonic() + 15
    total = 0.0
    while time.monotonic() < deadline:
        report = httpx.get(
            url + "/admin/spend", params={"group_by": "key"}, headers={"authorization": f"Bearer {MASTER}"}
        )
        report.raise_for_status()
        total = report.json()["total_cost_usd"] or 0.0
        requests = sum(row["requests"] for row in report.json()["data"])
        if requests >= 20:
            return float(total)
        time.sleep(0.2)
    return float(total)
