"""Budget counters are a cache of the ledger: a flushed Redis or a restarted embedded gateway still sees
the day's spend, and refuses at exactly the request it would have refused without losing them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from ferryman.testing import FakeOpenAI
from tests.api.fleet import openai_deployment, worst_case_upstream
from tests.processes import gateway_process
from tests.store.fixtures import throwaway_redis

pytestmark = pytest.mark.slow
MASTER = "sk-rebuild-master"
KEY = "fm-rebuild-key"
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "count me"}],
    "max_tokens": 10,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, float]]:
    """An upstream whose every answer costs exactly its worst case: (the fake, that cost in USD)."""
    with worst_case_upstream(BODY) as upstream:
        yield upstream


def gateway_config(fake: FakeOpenAI, each: float, **extra: Any) -> dict[str, Any]:
    """A key whose daily budget has room for three requests, not four."""
    deployment = openai_deployment(fake)
    return {
        "master_key": MASTER,
        "server": {"shutdown_delay_seconds": 0},
        "keys": [{"alias": "rebuilt", "key": KEY, "budget": {"daily_usd": 3 * each + each / 2}}],
        "models": [{"name": "chat", "deployments": [deployment]}],
        **extra,
    }


def ask(url: str, times: int) -> list[int]:
    """The status of each of `times` requests in turn (429s checked to be the budget's)."""
    statuses = []
    for _ in range(times):
        response = httpx.post(
            url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {KEY}"}, timeout=30
        )
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "budget_exceeded"
        statuses.append(response.status_code)
    return statuses


def wait_for_ledger(url: str, requests: int) -> None:
    """Until the SQL ledger holds `requests` requests (the Redis stream is fed into it in the background)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        report = httpx.get(
            url + "/admin/spend", params={"group_by": "key"}, headers={"authorization": f"Bearer {MASTER}"}
        )
        report.raise_for_status()
        if sum(row["requests"] for row in report.json()["data"]) >= requests:
            return
        time.sleep(0.1)
    raise AssertionError(f"the ledger did not reach {requests} requests")


def test_a_flushed_redis_still_sees_the_days_spend(
    tmp_path: Path, upstream: tuple[FakeOpenAI, float]
) -> None:
    fake, each = upstream
    with throwaway_redis() as redis_url:
        config = gateway_config(fake, each, redis_url=redis_url)
        with gateway_process(config, tmp_path) as (_process, url):
            before = len(fake.requests)
            assert ask(url, 2) == [200, 200]
            wait_for_ledger(url, 2)
            with Redis.from_url(redis_url) as client:
                assert client.dbsize() > 0
                client.flushall()  # the counters, the holds and the stream: everything Redis knew
            after_flush = ask(url, 3)
            usage = httpx.get(url + "/v1/usage", headers={"authorization": f"Bearer {KEY}"}).json()
    assert after_flush == [200, 429, 429]  # the third request fits, the fourth never did
    assert len(fake.requests) - before == 3
    assert usage["windows"]["daily"]["spent_usd"] == pytest.approx(3 * each, abs=1e-9)


def test_a_restarted_embedded_gateway_still_sees_the_days_spend(
    tmp_path: Path, upstream: tuple[FakeOpenAI, float]
) -> None:
    fake, each = upstream
    config = gateway_config(fake, each, data_dir=str(tmp_path / "data"))  # no Redis: in-process counters
    before = len(fake.requests)
    with gateway_process(config, tmp_path) as (_process, url):
        assert ask(url, 2) == [200, 200]
    with gateway_process(config, tmp_path) as (_process, url):  # the same data directory, fresh memory
        after_restart = ask(url, 3)
    assert after_restart == [200, 429, 429]
    assert len(fake.requests) - before == 3
