"""One replica's circuit breaker protects the fleet: two gateway processes on one real Redis, a model
with two deployments; the first one's upstream starts failing, only replica A sees it and opens the
circuit, and replica B — which saw no failure — stops sending to that upstream within a second."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.testing import FakeOpenAI, Reply
from tests.api.fleet import FREE, openai_deployment
from tests.processes import gateway_process

pytestmark = pytest.mark.slow
MASTER = "breaker-replicas-master"
HEADERS = {"authorization": f"Bearer {MASTER}"}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def replica_config(redis_url: str, flaky: FakeOpenAI, steady: FakeOpenAI) -> dict[str, Any]:
    def deployment(fake: FakeOpenAI, name: str, priority: int) -> dict[str, Any]:
        return openai_deployment(fake, FREE, name=name, priority=priority)

    return {
        "master_key": MASTER,
        "redis_url": f"{redis_url}?prefix=breaker-{uuid.uuid4().hex}",
        "data_dir": ":memory:",
        "server": {"shutdown_delay_seconds": 0},
        "retries": {"max_attempts_per_deployment": 1},
        "breaker": {"failure_threshold": 3, "cooldown_seconds": 60, "sync_interval_seconds": 0.2},
        "models": [
            {
                "name": "chat",
                "strategy": "priority",  # every request tries `flaky` first while it is closed
                "deployments": [deployment(flaky, "flaky", 1), deployment(steady, "steady", 2)],
            }
        ],
    }


def chat(url: str, times: int) -> list[int]:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as client:
        return [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(times)]


def circuit(url: str, name: str) -> str:
    deployments = httpx.get(url + "/health", timeout=5).json()["deployments"]
    return str(next(d["circuit"] for d in deployments if d["deployment"] == name))


def wait_for_circuit(url: str, name: str, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while circuit(url, name) != state:
        assert time.monotonic() < deadline, f"{name} never became {state} at {url}"
        time.sleep(0.05)


def test_a_circuit_opened_by_one_replica_is_honoured_by_the_other(tmp_path: Path, redis_url: str) -> None:
    with FakeOpenAI() as flaky, FakeOpenAI() as steady:
        config = replica_config(redis_url, flaky, steady)
        with (
            gateway_process(config, tmp_path) as (_, replica_a),
            gateway_process(config, tmp_path) as (_, replica_b),
        ):
            assert chat(replica_b, 2) == [200, 200]
            assert len(flaky.requests) == 2  # B uses `flaky` while it is healthy

            flaky.script.set_default(Reply.error(503))
            sent_by_a = 0
            while circuit(replica_a, "flaky") != "open":
                assert chat(replica_a, 1) == [200]  # each falls back to `steady`
                sent_by_a += 1
                assert sent_by_a <= 3, "replica A should open the circuit after 3 failures"
            assert circuit(replica_b, "flaky") in ("closed", "open")  # B saw no failure itself

            wait_for_circuit(replica_b, "flaky", "open")
            before = len(flaky.requests)
            assert chat(replica_b, 10) == [200] * 10
            assert len(flaky.requests) == before  # B no longer sends to the failing upstream
            assert len(steady.requests) == sent_by_a + 10

            scrape = httpx.get(replica_b + "/metrics", timeout=5).text
            assert 'ai_api_deployment_state{deployment="flaky"} 2.0' in scrape
            rows = httpx.get(replica_b + "/admin/deployments", headers=HEADERS, timeout=5).json()["data"]
            view = next(row for row in rows if row["deployment"] == "flaky")
            assert view["failures"] == 0 and view["circuit"]["state"] == "open"

            # An operator's reset on B closes it on A too.
            flaky.script.set_default(None)
            reset = httpx.post(replica_b + "/admin/deployments/flaky/reset", headers=HEADERS, timeout=5)
            assert reset.status_code == 200
            wait_for_circuit(replica_a, "flaky", "closed")
            before = len(flaky.requests)
            assert chat(replica_a, 2) == [200, 200]
            assert len(flaky.requests) == before + 2
